//! Our quantizer throughput on the rows tools/bench_quant_ggml.py wrote, and a byte comparison
//! with llama.cpp's output for them. Driven by tools/bench_quant.sh.
//!
//! ```sh
//! cargo run --release -p kernels-cpu --example bench_quant -- \
//!     --dir /tmp/bq --row-len 2048 --types Q5_K,Q6_K --threads 1,2 --runs 5
//! ```
//!
//! Reads `DIR/rows.f32` (little-endian f32, rows of `--row-len`), and for every type and thread
//! count (a rayon pool of that size) runs `quantize_rows` once to warm up and `--runs` times timed,
//! then prints one JSON line (`"impl":"medmoe"`, the fields of bench_quant_ggml.py plus
//! `"identical"`: whether our bytes equal `DIR/<TYPE>.ggml.bin`).

use std::time::Instant;

use kernels_cpu::quant::{quantize_rows, BlockType};

struct Args {
    dir: String,
    row_len: usize,
    types: Vec<BlockType>,
    threads: Vec<usize>,
    runs: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { dir: String::new(), row_len: 2048, types: vec![], threads: vec![1, 2], runs: 5 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = value()?,
            "--row-len" => a.row_len = value()?.parse().map_err(|e| format!("--row-len: {e}"))?,
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--types" => {
                a.types = value()?
                    .split(',')
                    .map(|t| BlockType::from_name(t.trim()).ok_or_else(|| format!("unknown type {t}")))
                    .collect::<Result<_, _>>()?
            }
            "--threads" => {
                a.threads = value()?
                    .split(',')
                    .map(|t| t.trim().parse().map_err(|e| format!("--threads: {e}")))
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.dir.is_empty() || a.types.is_empty() || a.runs == 0 {
        return Err("usage: bench_quant --dir DIR --types Q5_K,Q6_K [--row-len N] [--threads 1,2] [--runs N]".into());
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<(), String> {
    let a = parse_args()?;
    let raw = std::fs::read(format!("{}/rows.f32", a.dir)).map_err(|e| format!("{}/rows.f32: {e}", a.dir))?;
    let x: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if !x.len().is_multiple_of(a.row_len) {
        return Err(format!("{} values are not rows of {}", x.len(), a.row_len));
    }
    let rows = x.len() / a.row_len;
    for &ty in &a.types {
        let reference = std::fs::read(format!("{}/{}.ggml.bin", a.dir, ty.name())).ok();
        for &threads in &a.threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
            let (times, q) = pool.install(|| {
                let q = quantize_rows(ty, &x, a.row_len).map_err(|e| e.to_string())?;
                let mut times = Vec::with_capacity(a.runs);
                for _ in 0..a.runs {
                    let t0 = Instant::now();
                    let again = quantize_rows(ty, &x, a.row_len).map_err(|e| e.to_string())?;
                    times.push(t0.elapsed().as_secs_f64());
                    std::hint::black_box(&again);
                }
                Ok::<_, String>((times, q))
            })?;
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            let med = median(times);
            let identical = match &reference {
                Some(r) => (r == &q).to_string(),
                None => "null".to_string(),
            };
            println!(
                "{{\"bench\":\"quantize\",\"impl\":\"medmoe\",\"type\":\"{}\",\"rows\":{rows},\"row_len\":{},\"threads\":{threads},\"median_s\":{med},\"min_s\":{min},\"runs\":{},\"rows_per_s\":{},\"mvalues_per_s\":{},\"in_mb_per_s\":{},\"identical\":{identical}}}",
                ty.name(),
                a.row_len,
                a.runs,
                rows as f64 / med,
                x.len() as f64 / med / 1e6,
                x.len() as f64 * 4.0 / med / 1e6,
            );
        }
    }
    Ok(())
}
