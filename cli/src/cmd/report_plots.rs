//! The PNG plots of `moe-cli report`, drawn with `plotters` into an RGB buffer and encoded with
//! `png`. Text uses the DejaVu Sans Mono font compiled into the binary (assets/fonts), so the
//! report needs no system font.

use super::eval_summary::{EvalSummary, LatencyRow};
use super::report_data::PhaseMetrics;
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::sync::OnceLock;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";

fn pe<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

/// Registers the embedded font with plotters (once per process).
fn font_ready() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded font does not parse"))
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Draws into a `w x h` white canvas and returns the PNG bytes.
fn render(w: u32, h: u32, draw: impl FnOnce(&Area<'_>) -> Result<()>) -> Result<Vec<u8>> {
    font_ready()?;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(pe)?;
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&buf)?;
        writer.finish()?;
    }
    Ok(out)
}

/// `(lo, hi)` of finite values, padded by 5% (1 when all are equal).
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return None;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { 1.0 };
    Some((lo - pad, hi + pad))
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

/// Train loss (and cross-entropy) over steps, breaker actions as red vertical lines.
pub fn loss_curve(m: &PhaseMetrics) -> Result<Option<Vec<u8>>> {
    let Some((y0, y1)) = range(m.train.iter().flat_map(|&(_, l, c)| [l, c])) else { return Ok(None) };
    let x1 = m.train.iter().map(|t| t.0).max().unwrap_or(1).max(1) as f64;
    let png = render(900, 420, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{}: training loss (red: breaker actions)", m.phase), (FAMILY, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x1, y0..y1)
            .map_err(pe)?;
        chart.configure_mesh().x_desc("step").y_desc("nats").label_style((FAMILY, 12)).draw().map_err(pe)?;
        for b in &m.breakers {
            let style = if b.rollback { RED.stroke_width(3) } else { RED.mix(0.6).stroke_width(1) };
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(b.step as f64, y0), (b.step as f64, y1)], style)))
                .map_err(pe)?;
        }
        for (i, (name, pick)) in [("loss", 0usize), ("ce", 1)].into_iter().enumerate() {
            let pts: Vec<(f64, f64)> = m
                .train
                .iter()
                .map(|&(s, l, c)| (s as f64, if pick == 0 { l } else { c }))
                .filter(|p| p.1.is_finite())
                .collect();
            let c = color(i);
            chart
                .draw_series(std::iter::once(PathElement::new(pts, c.stroke_width(2))))
                .map_err(pe)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 12))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(pe)?;
        Ok(())
    })?;
    Ok(Some(png))
}

/// Dev perplexity per domain over steps.
pub fn ppl_curves(m: &PhaseMetrics) -> Result<Option<Vec<u8>>> {
    let Some((y0, y1)) = range(m.ppl.values().flatten().map(|p| p.1)) else { return Ok(None) };
    let x1 = m.ppl.values().flatten().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let png = render(900, 420, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{}: dev perplexity per domain", m.phase), (FAMILY, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x1 * 1.02, y0..y1)
            .map_err(pe)?;
        chart.configure_mesh().x_desc("step").y_desc("perplexity").label_style((FAMILY, 12)).draw().map_err(pe)?;
        for (i, (domain, pts)) in m.ppl.iter().enumerate() {
            let c = color(i);
            let pts: Vec<(f64, f64)> = pts.iter().map(|&(s, p)| (s as f64, p)).collect();
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(pe)?;
            chart
                .draw_series(std::iter::once(PathElement::new(pts, c.stroke_width(2))))
                .map_err(pe)?
                .label(domain.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .label_font((FAMILY, 12))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(pe)?;
        Ok(())
    })?;
    Ok(Some(png))
}

/// White (0) to dark blue (`max`).
fn shade(v: f64, max: f64) -> RGBColor {
    let t = if max > 0.0 { (v / max).clamp(0.0, 1.0) } else { 0.0 };
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

/// Text centred at `at` (chart coordinates).
fn label(text: String, at: (f64, f64), size: u32, color: RGBColor) -> Text<'static, (f64, f64), String> {
    let style = (FAMILY, size).into_font().color(&color).pos(Pos::new(HPos::Center, VPos::Center));
    Text::new(text, at, style)
}

/// Layer x expert routing shares; cells show percentages when there is room.
pub fn heatmap(title: &str, share: &[Vec<f64>]) -> Result<Vec<u8>> {
    let layers = share.len();
    let experts = share.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let max = share.iter().flatten().cloned().fold(0.0, f64::max);
    let h = (90 + 36 * layers.max(1)).min(1400) as u32;
    render(900, h, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{title} (max {:.1}%, uniform {:.1}%)", 100.0 * max, 100.0 / experts as f64), (FAMILY, 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..experts as f64, 0f64..layers.max(1) as f64)
            .map_err(pe)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("expert")
            .y_desc("layer")
            .x_labels(experts.min(32))
            .y_labels(layers.clamp(1, 32))
            .x_label_formatter(&|v| if v.fract().abs() < 1e-9 { format!("{}", *v as usize) } else { String::new() })
            .y_label_formatter(&|v| if v.fract().abs() < 1e-9 { format!("{}", *v as usize) } else { String::new() })
            .label_style((FAMILY, 11))
            .draw()
            .map_err(pe)?;
        for (l, row) in share.iter().enumerate() {
            chart
                .draw_series(row.iter().enumerate().map(|(e, &v)| {
                    Rectangle::new([(e as f64, l as f64), (e as f64 + 1.0, l as f64 + 1.0)], shade(v, max).filled())
                }))
                .map_err(pe)?;
            if experts <= 24 {
                for (e, &v) in row.iter().enumerate() {
                    let c = if v > 0.55 * max { WHITE } else { BLACK };
                    chart
                        .draw_series(std::iter::once(label(
                            format!("{:.0}", 100.0 * v),
                            (e as f64 + 0.5, l as f64 + 0.5),
                            10,
                            c,
                        )))
                        .map_err(pe)?;
                }
            }
        }
        Ok(())
    })
}

/// Labelled rows x expert shares (the specialization experiment: one row per layer and domain);
/// cells show percentages when there is room.
pub fn row_heatmap(title: &str, rows: &[String], share: &[Vec<f64>]) -> Result<Vec<u8>> {
    let n = share.len().max(1);
    let experts = share.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let max = share.iter().flatten().cloned().fold(0.0, f64::max);
    // The row names sit in the plotting area left of expert 0 (`margin` experts wide).
    let margin = (experts as f64 * 0.3).max(2.0);
    let h = (90 + 28 * n).min(2000) as u32;
    render(1000, h, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("{title} (max {:.1}%, uniform {:.1}%)", 100.0 * max, 100.0 / experts as f64), (FAMILY, 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(4)
            .build_cartesian_2d(-margin..experts as f64, 0f64..n as f64)
            .map_err(pe)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("expert")
            .x_labels(experts.min(32) + margin as usize)
            .y_labels(0)
            .x_label_formatter(&|v| {
                if *v >= 0.0 && v.fract().abs() < 1e-9 && (*v as usize) < experts {
                    format!("{}", *v as usize)
                } else {
                    String::new()
                }
            })
            .label_style((FAMILY, 11))
            .draw()
            .map_err(pe)?;
        for (r, name) in rows.iter().enumerate().take(n) {
            let style = (FAMILY, 11).into_font().color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center));
            chart.draw_series(std::iter::once(Text::new(name.clone(), (-0.2, r as f64 + 0.5), style))).map_err(pe)?;
        }
        for (r, row) in share.iter().enumerate() {
            chart
                .draw_series(row.iter().enumerate().map(|(e, &v)| {
                    Rectangle::new([(e as f64, r as f64), (e as f64 + 1.0, r as f64 + 1.0)], shade(v, max).filled())
                }))
                .map_err(pe)?;
            if experts <= 24 {
                for (e, &v) in row.iter().enumerate() {
                    let c = if v > 0.55 * max { WHITE } else { BLACK };
                    let at = (e as f64 + 0.5, r as f64 + 0.5);
                    chart.draw_series(std::iter::once(label(format!("{:.0}", 100.0 * v), at, 10, c))).map_err(pe)?;
                }
            }
        }
        Ok(())
    })
}

/// The routing share over training: one panel per layer, expert (rows) x step (columns, steps
/// averaged into at most 120 columns), shaded by share. None without logged steps.
pub fn routing_over_steps(title: &str, steps: &[(u64, Vec<Vec<f64>>)]) -> Result<Option<Vec<u8>>> {
    let Some((first, _)) = steps.first() else { return Ok(None) };
    let layers = steps.iter().map(|(_, s)| s.len()).max().unwrap_or(0);
    let experts = steps.iter().flat_map(|(_, s)| s.iter().map(Vec::len)).max().unwrap_or(0);
    if layers == 0 || experts == 0 {
        return Ok(None);
    }
    let last = steps.last().map_or(*first, |(s, _)| *s);
    let cols = steps.len().min(120);
    // Column c averages the steps whose index falls in its bucket.
    let mut grid = vec![vec![vec![0.0f64; cols]; experts]; layers];
    let mut counts = vec![0usize; cols];
    for (i, (_, share)) in steps.iter().enumerate() {
        let c = i * cols / steps.len();
        counts[c] += 1;
        for (l, row) in share.iter().enumerate() {
            for (e, &v) in row.iter().enumerate() {
                grid[l][e][c] += v;
            }
        }
    }
    for layer in &mut grid {
        for row in layer.iter_mut() {
            for (v, &n) in row.iter_mut().zip(&counts) {
                *v /= n.max(1) as f64;
            }
        }
    }
    let max = grid.iter().flatten().flatten().cloned().fold(0.0, f64::max);
    let panel = (40 + 10 * experts).clamp(90, 260);
    let h = (40 + panel * layers).min(2400) as u32;
    let png = render(900, h, |root| {
        let (top, rest) = root.split_vertically(40);
        top.draw(&Text::new(
            format!("{title} (steps {first}..{last}, max {:.1}%, uniform {:.1}%)", 100.0 * max, 100.0 / experts as f64),
            (12, 12),
            (FAMILY, 16),
        ))
        .map_err(pe)?;
        for (l, area) in rest.split_evenly((layers, 1)).iter().enumerate() {
            let mut chart = ChartBuilder::on(area)
                .margin(6)
                .x_label_area_size(if l + 1 == layers { 28 } else { 6 })
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..cols as f64, 0f64..experts as f64)
                .map_err(pe)?;
            let per_col = (last - first + 1) as f64 / cols as f64;
            chart
                .configure_mesh()
                .disable_mesh()
                .y_desc(format!("layer {l}"))
                .x_desc(if l + 1 == layers { "step" } else { "" })
                .x_labels(if l + 1 == layers { 8 } else { 0 })
                .y_labels(experts.min(16))
                .x_label_formatter(&|v| format!("{:.0}", *first as f64 + v * per_col))
                .y_label_formatter(&|v| if v.fract().abs() < 1e-9 { format!("{}", *v as usize) } else { String::new() })
                .label_style((FAMILY, 10))
                .draw()
                .map_err(pe)?;
            for (e, row) in grid[l].iter().enumerate() {
                chart
                    .draw_series(row.iter().enumerate().map(|(c, &v)| {
                        Rectangle::new([(c as f64, e as f64), (c as f64 + 1.0, e as f64 + 1.0)], shade(v, max).filled())
                    }))
                    .map_err(pe)?;
            }
        }
        Ok(())
    })?;
    Ok(Some(png))
}

/// Accuracy by option log-likelihood per set, one bar per model, Wilson 95% intervals as
/// whiskers, chance as a grey line.
pub fn accuracy_bars(s: &EvalSummary) -> Result<Option<Vec<u8>>> {
    if s.mcq.is_empty() {
        return Ok(None);
    }
    let sets: Vec<&str> = s.sets.iter().map(|x| x.name.as_str()).collect();
    let models: Vec<&str> = s.models.iter().map(|x| x.name.as_str()).collect();
    let png = render(1000, 460, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("MCQ accuracy (option log-likelihood), 95% Wilson intervals; grey: chance", (FAMILY, 16))
            .margin(12)
            .x_label_area_size(10)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5f64..sets.len() as f64 - 0.5, -0.1f64..1.05)
            .map_err(pe)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("accuracy")
            .label_style((FAMILY, 12))
            .draw()
            .map_err(pe)?;
        let width = 0.8 / models.len().max(1) as f64;
        for (mi, model) in models.iter().enumerate() {
            let c = color(mi);
            let mut bars = Vec::new();
            let mut whiskers = Vec::new();
            for (si, set) in sets.iter().enumerate() {
                let Some(r) = s.mcq.iter().find(|r| r.model == *model && r.set == *set) else { continue };
                let x0 = si as f64 - 0.4 + mi as f64 * width;
                bars.push(Rectangle::new([(x0, 0.0), (x0 + width * 0.9, r.loglik.value)], c.filled()));
                let xm = x0 + width * 0.45;
                whiskers.push(PathElement::new(vec![(xm, r.loglik.lo), (xm, r.loglik.hi)], BLACK.stroke_width(2)));
                let cap = width * 0.2;
                for y in [r.loglik.lo, r.loglik.hi] {
                    whiskers.push(PathElement::new(vec![(xm - cap, y), (xm + cap, y)], BLACK.stroke_width(2)));
                }
            }
            chart
                .draw_series(bars)
                .map_err(pe)?
                .label(*model)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            chart.draw_series(whiskers).map_err(pe)?;
        }
        for (si, set) in sets.iter().enumerate() {
            if let Some(r) = s.mcq.iter().find(|r| r.set == *set) {
                let x = si as f64;
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(x - 0.45, r.chance), (x + 0.45, r.chance)],
                        RGBColor(120, 120, 120).stroke_width(2),
                    )))
                    .map_err(pe)?;
            }
            chart.draw_series(std::iter::once(label(set.to_string(), (si as f64, -0.05), 13, BLACK))).map_err(pe)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 12))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(pe)?;
        Ok(())
    })?;
    Ok(Some(png))
}

/// A confusion matrix `[answer][predicted]` with counts; `columns` names the predicted columns.
pub fn confusion(title: &str, rows: &[String], columns: &[String], m: &[Vec<u64>]) -> Result<Vec<u8>> {
    let (nr, nc) = (rows.len().max(1) as f64, columns.len().max(1) as f64);
    let max = m.iter().flatten().cloned().max().unwrap_or(0) as f64;
    render(520, 480, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FAMILY, 14))
            .margin(12)
            .build_cartesian_2d(-0.8f64..nc, -0.2f64..nr + 0.8)
            .map_err(pe)?;
        for (i, row) in m.iter().enumerate() {
            // Answer i is drawn from the top.
            let y = nr - 1.0 - i as f64;
            for (j, &v) in row.iter().enumerate() {
                let x = j as f64;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x, y), (x + 1.0, y + 1.0)],
                        shade(v as f64, max).filled(),
                    )))
                    .map_err(pe)?;
                let c = if v as f64 > 0.55 * max { WHITE } else { BLACK };
                chart.draw_series(std::iter::once(label(v.to_string(), (x + 0.5, y + 0.5), 13, c))).map_err(pe)?;
            }
            let name = rows.get(i).cloned().unwrap_or_default();
            chart.draw_series(std::iter::once(label(name, (-0.4, y + 0.5), 13, BLACK))).map_err(pe)?;
        }
        for (j, name) in columns.iter().enumerate() {
            chart
                .draw_series(std::iter::once(label(name.clone(), (j as f64 + 0.5, nr + 0.3), 13, BLACK)))
                .map_err(pe)?;
        }
        chart
            .draw_series(std::iter::once(label("answer \\ predicted".into(), (-0.4, nr + 0.6), 11, BLACK)))
            .map_err(pe)?;
        Ok(())
    })
}

/// A latency panel: its title and the value it shows.
type Panel = (&'static str, fn(&LatencyRow) -> f64);

/// Prefill and decode tokens/s per model (batch 1, our runtime).
pub fn latency_bars(rows: &[LatencyRow]) -> Result<Option<Vec<u8>>> {
    if rows.is_empty() {
        return Ok(None);
    }
    let png = render(1000, 420, |root| {
        let halves = root.split_evenly((1, 2));
        let panels: [Panel; 2] = [
            ("prefill tokens/s", |r| r.prefill_tokens_per_s),
            ("decode tokens/s (batch 1)", |r| r.decode_tokens_per_s),
        ];
        for (area, (title, value)) in halves.iter().zip(panels) {
            let top = rows.iter().map(value).fold(0.0, f64::max).max(1e-9) * 1.15;
            let mut chart = ChartBuilder::on(area)
                .caption(title, (FAMILY, 15))
                .margin(12)
                .x_label_area_size(10)
                .y_label_area_size(60)
                .build_cartesian_2d(-0.5f64..rows.len() as f64 - 0.5, -top * 0.08..top)
                .map_err(pe)?;
            chart.configure_mesh().disable_x_mesh().x_labels(0).label_style((FAMILY, 11)).draw().map_err(pe)?;
            for (i, r) in rows.iter().enumerate() {
                let x = i as f64;
                let v = value(r);
                chart
                    .draw_series(std::iter::once(Rectangle::new([(x - 0.35, 0.0), (x + 0.35, v)], color(i).filled())))
                    .map_err(pe)?;
                chart
                    .draw_series(std::iter::once(label(format!("{v:.0}"), (x, v + top * 0.04), 11, BLACK)))
                    .map_err(pe)?;
                chart.draw_series(std::iter::once(label(r.model.clone(), (x, -top * 0.04), 12, BLACK))).map_err(pe)?;
            }
        }
        Ok(())
    })?;
    Ok(Some(png))
}
