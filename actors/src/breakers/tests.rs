use super::*;
use rand::{Rng, SeedableRng};

const E: usize = 16;
const LAYERS: usize = 3;

fn cfg(window: usize, cooldown: usize) -> BreakerConfig {
    BreakerConfig {
        overflow_window: window,
        collapse_window: window,
        underuse_window: window,
        noise_steps: 4,
        cooldown,
        ..BreakerConfig::default()
    }
}

fn knobs() -> RouterKnobs {
    RouterKnobs { capacity_factor: 1.25, temperature: 0.9, lb_coef: 0.01, router_noise: 0.0, lr_scale: 1.0 }
}

fn stats(share: Vec<f32>, overflow: f32) -> RouterStats {
    let counts = share.iter().map(|s| (s * 1000.0) as usize).collect();
    RouterStats { counts, share, entropy: 1.0, load_entropy: 1.0, overflow_frac: overflow, dropped_frac: overflow }
}

fn balanced() -> RouterStats {
    stats(vec![1.0 / E as f32; E], 0.0)
}

/// One expert takes `top`, the rest split the remainder evenly.
fn collapsed(top: f32) -> RouterStats {
    let mut share = vec![(1.0 - top) / (E - 1) as f32; E];
    share[0] = top;
    stats(share, 0.0)
}

/// `n` experts at 1% share, the rest split the remainder.
fn underused(n: usize) -> RouterStats {
    let rest = (1.0 - 0.01 * n as f32) / (E - n) as f32;
    stats((0..E).map(|e| if e < n { 0.01 } else { rest }).collect(), 0.0)
}

/// All layers balanced except layer `bad_layer`, which gets `bad`.
fn step_stats(bad: &RouterStats, bad_layer: usize) -> Vec<RouterStats> {
    (0..LAYERS).map(|l| if l == bad_layer { bad.clone() } else { balanced() }).collect()
}

struct Case {
    name: &'static str,
    bad: RouterStats,
    kind: BreakerKind,
    changes: Vec<(Knob, f32, f32)>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "overflow",
            bad: stats(vec![1.0 / E as f32; E], 0.01),
            kind: BreakerKind::Overflow,
            changes: vec![(Knob::CapacityFactor, 1.25, 1.3), (Knob::Temperature, 0.9, 0.85)],
        },
        Case {
            name: "collapse",
            bad: collapsed(0.5),
            kind: BreakerKind::Collapse,
            changes: vec![(Knob::LbCoef, 0.01, 0.012), (Knob::Temperature, 0.9, 0.85)],
        },
        Case {
            name: "underuse",
            bad: underused(5),
            kind: BreakerKind::Underuse,
            changes: vec![(Knob::Temperature, 0.9, 0.95), (Knob::RouterNoise, 0.0, 0.01)],
        },
    ]
}

fn check_fired(case: &Case, actions: &[BreakerAction], step: u64) {
    assert_eq!(actions.len(), 1, "{}: {actions:?}", case.name);
    let a = &actions[0];
    assert_eq!((a.step, a.breaker, a.rollback), (step, case.kind, false), "{}", case.name);
    assert!(a.reason.contains("layer 1"), "{}: {}", case.name, a.reason);
    let got: Vec<(Knob, f32, f32)> = a.changes.iter().map(|c| (c.knob, c.from, c.to)).collect();
    assert_eq!(got.len(), case.changes.len(), "{}: {got:?}", case.name);
    for (g, w) in got.iter().zip(&case.changes) {
        assert!(g.0 == w.0 && (g.1 - w.1).abs() < 1e-6 && (g.2 - w.2).abs() < 1e-6, "{}: {got:?}", case.name);
    }
}

#[test]
fn each_breaker_fires_exactly_when_its_window_is_full() {
    const W: u64 = 5;
    for case in cases() {
        let mut b = Breakers::new(cfg(W as usize, 100));
        for step in 1..W {
            assert!(b.observe_step(step, &step_stats(&case.bad, 1), &knobs()).is_empty(), "{} at {step}", case.name);
        }
        check_fired(&case, &b.observe_step(W, &step_stats(&case.bad, 1), &knobs()), W);

        // One healthy step in the middle restarts the window.
        let mut b = Breakers::new(cfg(W as usize, 100));
        let mut step = 0;
        for bad in [true, true, true, true, false, true, true, true, true] {
            step += 1;
            let s = if bad { step_stats(&case.bad, 1) } else { step_stats(&balanced(), 0) };
            assert!(b.observe_step(step, &s, &knobs()).is_empty(), "{} at {step}", case.name);
        }
        check_fired(&case, &b.observe_step(step + 1, &step_stats(&case.bad, 1), &knobs()), step + 1);

        // The condition hopping between layers never fills one layer's window.
        let mut b = Breakers::new(cfg(W as usize, 100));
        for step in 1..=4 * W {
            let s = step_stats(&case.bad, (step % 2) as usize);
            assert!(b.observe_step(step, &s, &knobs()).is_empty(), "{} at {step}", case.name);
        }
    }
}

#[test]
fn cooldown_holds_a_breaker_back() {
    for case in cases() {
        let mut b = Breakers::new(cfg(2, 10));
        let mut k = knobs();
        let mut fired = Vec::new();
        for step in 1..=25 {
            for a in b.observe_step(step, &step_stats(&case.bad, 1), &k) {
                a.apply(&mut k);
                if a.breaker == case.kind {
                    fired.push(step);
                }
            }
        }
        assert_eq!(fired, vec![2, 12, 22], "{}", case.name);
    }
}

#[test]
fn injected_router_collapse_fires_collapse_with_its_numbers() {
    let mut b = Breakers::new(cfg(20, 100));
    let layers = vec![collapsed(0.9); 4];
    for step in 1..20 {
        assert!(b.observe_step(step, &layers, &knobs()).is_empty(), "step {step}");
    }
    let actions = b.observe_step(20, &layers, &knobs());
    assert_eq!(actions.len(), 1, "{actions:?}");
    let a = &actions[0];
    assert_eq!(a.breaker, BreakerKind::Collapse);
    for needle in ["layer 0", "> 0.4", "last 20 steps", "expert 0 at 0.900", "4 of 4 layers"] {
        assert!(a.reason.contains(needle), "{needle:?} not in {:?}", a.reason);
    }
    let json = serde_json::to_value(a).unwrap();
    assert_eq!(json["breaker"], "collapse");
    assert_eq!(json["changes"][0]["knob"], "lb_coef");
}

#[test]
fn underuse_noise_switches_off_after_noise_steps() {
    let mut b = Breakers::new(cfg(3, 100));
    let mut k = RouterKnobs { router_noise: 0.002, ..knobs() };
    let mut log = Vec::new();
    for step in 1..=10 {
        let s = if step <= 3 { step_stats(&underused(6), 2) } else { step_stats(&balanced(), 0) };
        for a in b.observe_step(step, &s, &k) {
            a.apply(&mut k);
            log.push((step, a.breaker, a.changes.iter().map(|c| (c.knob, c.to)).collect::<Vec<_>>()));
        }
    }
    let expect = vec![
        (3, BreakerKind::Underuse, vec![(Knob::Temperature, 0.95), (Knob::RouterNoise, 0.01)]),
        (7, BreakerKind::NoiseOff, vec![(Knob::RouterNoise, 0.002)]),
    ];
    assert_eq!(log.len(), expect.len(), "{log:?}");
    for (g, w) in log.iter().zip(&expect) {
        assert_eq!((g.0, g.1), (w.0, w.1));
        assert!(g.2.iter().zip(&w.2).all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() < 1e-6), "{log:?}");
    }
    assert!((k.temperature - 0.95).abs() < 1e-6 && k.router_noise == 0.002);
}

#[test]
fn dev_ppl_halves_then_rolls_back() {
    let nan = f64::NAN;
    // (perplexities, expected (eval index, rollback) of each action)
    type Row = (Vec<f64>, Vec<(usize, bool)>);
    let table: Vec<Row> = vec![
        (vec![10.0, 11.0, 12.0], vec![]),
        (vec![10.0, 11.0, 12.0, 13.0], vec![(3, false)]),
        (vec![10.0, 11.0, 12.0, 13.0, 14.0, 15.0], vec![(3, false)]),
        (vec![10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0], vec![(3, false), (6, true)]),
        (vec![10.0, 11.0, 12.0, 11.0, 12.0, 13.0, 14.0], vec![(6, false)]),
        (vec![10.0, 11.0, 12.0, 13.0, 12.0, 13.0, 14.0, 15.0], vec![(3, false), (7, false)]),
        (vec![10.0, 10.0, 10.0, 10.0, 10.0], vec![]),
        (vec![10.0, nan, f64::INFINITY, nan], vec![(3, false)]),
        (vec![nan, 10.0, 11.0, 12.0, 13.0], vec![(4, false)]),
    ];
    for (ppls, expect) in table {
        let mut b = Breakers::new(BreakerConfig::default());
        let mut k = knobs();
        let mut got = Vec::new();
        for (i, &p) in ppls.iter().enumerate() {
            assert!(b.observe_eval(i as u64, None, &k).is_empty());
            for a in b.observe_eval(i as u64 * 100, Some(p), &k) {
                assert_eq!(a.breaker, BreakerKind::DevPpl);
                assert!(a.reason.contains("medical dev PPL"), "{}", a.reason);
                a.apply(&mut k);
                got.push((i, a.rollback));
            }
        }
        assert_eq!(got, expect, "{ppls:?}");
        assert_eq!(k.lr_scale, 0.5f32.powi(expect.len() as i32), "{ppls:?}");
    }
}

#[test]
fn knobs_stay_clamped_and_finite() {
    let mut b = Breakers::new(cfg(1, 0));
    let mut k = RouterKnobs { capacity_factor: 3.98, temperature: 0.32, ..knobs() };
    let over = step_stats(&stats(vec![1.0 / E as f32; E], 0.5), 1);
    let a = b.observe_step(1, &over, &k);
    a[0].apply(&mut k);
    assert_eq!((k.capacity_factor, k.temperature), (4.0, 0.3));
    let a = b.observe_step(2, &over, &k);
    assert!(a[0].changes.is_empty() && a[0].reason.contains("limits"), "{a:?}");
    // Garbage in the knobs or the config never yields a NaN.
    let mut k = RouterKnobs { temperature: f32::NAN, capacity_factor: f32::INFINITY, ..knobs() };
    b.config.capacity_step = f32::NAN;
    for a in b.observe_step(3, &over, &k) {
        a.apply(&mut k);
        for c in &a.changes {
            let (lo, hi) = c.knob.range();
            assert!(c.from.is_finite() && c.to.is_finite() && (lo..=hi).contains(&c.to), "{c:?}");
        }
    }
    assert!(k.temperature.is_finite() && k.capacity_factor.is_finite(), "{k:?}");
}

#[test]
fn actions_of_one_step_chain_their_changes() {
    let mut b = Breakers::new(cfg(1, 0));
    let mut both = collapsed(0.6);
    both.overflow_frac = 0.2;
    let mut k = knobs();
    let actions = b.observe_step(1, &[both], &k);
    let kinds: Vec<BreakerKind> = actions.iter().map(|a| a.breaker).collect();
    assert_eq!(kinds, vec![BreakerKind::Overflow, BreakerKind::Collapse]);
    assert_eq!(actions[1].changes[1].from, actions[0].changes[1].to);
    actions.iter().for_each(|a| a.apply(&mut k));
    assert!((k.temperature - 0.8).abs() < 1e-6, "{k:?}");
}

#[test]
fn disabled_breakers_stay_silent() {
    let mut b = Breakers::new(BreakerConfig { enabled: false, ..cfg(1, 0) });
    for case in cases() {
        assert!(b.observe_step(1, &step_stats(&case.bad, 0), &knobs()).is_empty());
    }
    for (i, p) in [1.0, 2.0, 3.0, 4.0, 5.0].into_iter().enumerate() {
        assert!(b.observe_eval(i as u64, Some(p), &knobs()).is_empty());
    }
    assert!(b.observe_nonfinite(1, f32::NAN, 1.0).is_empty());
    let mut on = Breakers::new(BreakerConfig::default());
    let a = on.observe_nonfinite(4, f32::NAN, f32::INFINITY);
    assert_eq!((a.len(), a[0].breaker, a[0].changes.len()), (1, BreakerKind::Nonfinite, 0));
    assert!(a[0].reason.contains("NaN") && a[0].reason.contains("inf"), "{}", a[0].reason);
}

/// Random router statistics that trip every breaker now and then.
fn random_step(rng: &mut rand_chacha::ChaCha8Rng) -> Vec<RouterStats> {
    (0..LAYERS)
        .map(|_| match rng.gen_range(0..4) {
            0 => stats(vec![1.0 / E as f32; E], rng.gen_range(0.0..0.02)),
            1 => collapsed(rng.gen_range(0.3..0.9)),
            2 => underused(rng.gen_range(2..8)),
            _ => balanced(),
        })
        .collect()
}

#[test]
fn state_round_trips_through_serde_and_behaves_identically() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let inputs: Vec<Vec<RouterStats>> = (0..400).map(|_| random_step(&mut rng)).collect();
    let ppls: Vec<f64> = (0..40).map(|i| 10.0 + (i % 9) as f64 + rng.gen_range(0.0..0.5)).collect();
    let config = BreakerConfig { noise_steps: 7, ..cfg(2, 3) };
    let run = |b: &mut Breakers, k: &mut RouterKnobs, range: std::ops::Range<usize>| {
        let mut log = Vec::new();
        for i in range {
            let mut actions = b.observe_step(i as u64 + 1, &inputs[i], k);
            if i % 10 == 9 {
                actions.extend(b.observe_eval(i as u64 + 1, Some(ppls[i / 10]), k));
            }
            actions.iter().for_each(|a| a.apply(k));
            log.extend(actions);
        }
        log
    };
    let (mut b, mut k) = (Breakers::new(config), knobs());
    let first = run(&mut b, &mut k, 0..200);
    assert!(!first.is_empty());
    let text = serde_json::to_string(&(&b, &k)).unwrap();
    let (mut restored, mut k2): (Breakers, RouterKnobs) = serde_json::from_str(&text).unwrap();
    assert_eq!((&restored, &k2), (&b, &k));
    let a = run(&mut b, &mut k, 200..400);
    let r = run(&mut restored, &mut k2, 200..400);
    let kinds: std::collections::BTreeSet<String> = a.iter().map(|x| format!("{:?}", x.breaker)).collect();
    assert!(kinds.len() >= 4, "too few breakers exercised: {kinds:?}");
    assert_eq!(a, r);
    assert_eq!(b, restored);
}

#[test]
fn config_reads_phase_json_with_defaults_and_validates() {
    let json =
        r#"{ "overflow_window": 10, "collapse_window": 20, "underuse_window": 20, "noise_steps": 20, "cooldown": 10 }"#;
    let c: BreakerConfig = serde_json::from_str(json).unwrap();
    let d = BreakerConfig::default();
    assert_eq!((c.overflow_window, c.cooldown, c.overflow_frac, c.collapse_share), (10, 10, 0.005, 0.40));
    assert_eq!(
        (d.underuse_share, d.underuse_experts, d.lb_step, d.lr_factor, d.ppl_rising_evals),
        (0.03, 4, 0.002, 0.5, 3)
    );
    c.validate().unwrap();
    assert!(serde_json::from_str::<BreakerConfig>(r#"{ "overflow_windw": 1 }"#).is_err());
    let bad = BreakerConfig { lr_factor: 0.0, ..d.clone() };
    assert_eq!(bad.validate().unwrap_err().field, "lr_factor");
    let bad = BreakerConfig { collapse_share: 1.5, ..d };
    assert!(bad.validate().unwrap_err().to_string().contains("collapse_share"));
}
