//! `moe-cli bench step`: one JSON line; with `--profile`, the per-op times of the step.

use std::process::Command;

fn bench_step(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .args(["--threads", "1", "bench", "step", "--preset", "tiny-dense", "--batch", "1", "--seq", "16"])
        .args(["--steps", "2", "--warmup", "1"])
        .args(extra)
        .output()
        .expect("run moe-cli");
    assert!(out.status.success(), "bench step failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {stdout}");
    serde_json::from_str(lines[0]).expect("JSON line")
}

#[test]
fn profile_lists_the_ops_of_the_step() {
    let plain = bench_step(&[]);
    assert!(plain["step_s"].as_f64().unwrap() > 0.0);
    assert!(plain["profile"].is_null(), "no profile unless asked: {plain}");

    let v = bench_step(&["--profile"]);
    let ops = v["profile"].as_array().expect("profile array");
    let get =
        |name: &str| ops.iter().find(|o| o["op"] == name).unwrap_or_else(|| panic!("op {name} missing from {ops:?}"));
    // tiny-dense: 4 layers, fused q/k/v and gate/up (4 linears per layer), 2 + 2 norms per layer + final.
    assert_eq!(get("linear")["calls_per_step"], 16);
    assert_eq!(get("attention")["calls_per_step"], 4);
    assert_eq!(get("rmsnorm")["calls_per_step"], 17);
    assert_eq!(get("lm_head_cross_entropy")["calls_per_step"], 1);
    assert_eq!(get("adamw")["calls_per_step"], 1);
    assert!(get("linear")["backward_ms"].as_f64().unwrap() > 0.0);
    let total: f64 = ops.iter().map(|o| o["forward_ms"].as_f64().unwrap() + o["backward_ms"].as_f64().unwrap()).sum();
    let step_ms = 1e3 * v["all_step_s"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).sum::<f64>() / 2.0;
    // The ops and stages cover the step (rounding of all_step_s to 0.1 ms aside).
    assert!(total <= step_ms * 1.05 + 0.2 && total >= step_ms * 0.5, "ops {total:.2} ms vs step {step_ms:.2} ms");
}

#[test]
fn cuda_without_a_backend_is_a_clear_error_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_moe-cli")).current_dir(tmp.path()).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // Where this build or machine cannot run CUDA (the default build has no CUDA backend), both
    // commands refuse the device with the typed error of `Tape::new_on`; `run` does so before its
    // first stage.
    let (ok, bench_err) = run(&["bench", "step", "--device", "cuda", "--batch", "1", "--seq", "16", "--steps", "1"]);
    if !ok {
        assert!(bench_err.starts_with("error: cuda device not available"), "{bench_err}");
        let (ok, err) = run(&["run", "phase", "p1", "--device", "cuda", "--run-dir", "R", "--quiet"]);
        assert!(!ok && err == bench_err, "{err}");
        assert!(!tmp.path().join("R").join("data").exists(), "no stage ran");
    }
    let (ok, err) = run(&["bench", "step", "--device", "gpu"]);
    assert!(!ok && err.contains("cpu, sim, cuda"), "{err}");
}

/// Issue 17: `--precision bf16` runs the same step with bf16 GEMM operands (AMX or AVX512-BF16
/// where the CPU has it, else emulated with a warning); the loss stays within bf16 rounding of the f32 step's.
#[test]
fn bf16_precision_runs_the_step_and_bad_values_are_refused() {
    let f32_step = bench_step(&[]);
    let bf16_step = bench_step(&["--precision", "bf16"]);
    assert_eq!(f32_step["precision"], "f32");
    assert_eq!(bf16_step["precision"], "bf16");
    let gemm = bf16_step["gemm"].as_str().unwrap();
    assert!(["amx-bf16", "avx512-bf16", "bf16-emulated"].contains(&gemm), "{bf16_step}");
    let (a, b) = (f32_step["loss"].as_f64().unwrap(), bf16_step["loss"].as_f64().unwrap());
    // Same model, data and seeds: the losses of the second step differ by bf16 rounding only
    // (operand rounding 2^-9 relative; the mean loss over 15 tokens moves far less than 1%).
    assert!(a.is_finite() && (a - b).abs() <= 1e-2 * a.abs(), "f32 loss {a} vs bf16 loss {b}");

    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_moe-cli")).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // `bench gemm --precision bf16` runs on the same backend as the bf16 step.
    let out = Command::new(env!("CARGO_BIN_EXE_moe-cli"))
        .args(["--threads", "1", "bench", "gemm", "--precision", "bf16", "--shapes", "64x48x40", "--reps", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((line["precision"].as_str(), line["backend"].as_str()), (Some("bf16"), Some(gemm)), "{line}");
    assert!(line["gflops"].as_f64().unwrap() > 0.0, "{line}");
    let (code, err) = run(&["bench", "step", "--precision", "fp16"]);
    assert!(code == Some(2) && err.contains("`fp16` is not a precision (f32, bf16)"), "{err}");
    let (code, err) = run(&["bench", "step", "--precision", "bf16", "--device", "sim", "--batch", "1", "--seq", "16"]);
    assert!(code == Some(1) && err.contains("bf16 precision is not supported on the sim device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
