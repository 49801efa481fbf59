//! What every subcommand checks before it works: numeric options in their domain (clap
//! `value_parser`s, so a bad value is refused with the option's name before anything runs),
//! sizes against the memory this machine has, and output paths that must not clobber a file.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// A finite f32 (NaN and infinities refused).
fn finite(s: &str) -> Result<f32, String> {
    let v: f32 = s.trim().parse().map_err(|_| format!("`{s}` is not a number"))?;
    if !v.is_finite() {
        return Err(format!("`{s}` is not finite"));
    }
    Ok(v)
}

/// A finite f32 >= 0 (a standard deviation).
pub fn non_negative(s: &str) -> Result<f32, String> {
    let v = finite(s)?;
    if v < 0.0 {
        return Err(format!("{v} is negative"));
    }
    Ok(v)
}

/// A finite f32 in [0, 1) (an EMA decay: 1 would never move from zero).
pub fn decay(s: &str) -> Result<f32, String> {
    let v = finite(s)?;
    if !(0.0..1.0).contains(&v) {
        return Err(format!("{v} is outside [0, 1)"));
    }
    Ok(v)
}

/// A count >= 1, written as an integer or in exact scientific notation (`2e6`).
pub fn count(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let v = match t.parse::<u64>() {
        Ok(v) => v,
        Err(_) => {
            let f: f64 = t.parse().map_err(|_| format!("`{s}` is not a whole number"))?;
            if !(f.is_finite() && f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64) {
                return Err(format!("`{s}` is not a whole number"));
            }
            f as u64
        }
    };
    if v == 0 {
        return Err("must be at least 1".into());
    }
    Ok(v)
}

/// [`count`] as a `usize`.
pub fn count_usize(s: &str) -> Result<usize, String> {
    let v = count(s)?;
    usize::try_from(v).map_err(|_| format!("{v} does not fit this machine's address space"))
}

/// A GEMM precision for `--precision` (`f32`, `bf16`).
pub fn precision(s: &str) -> Result<autograd::Precision, String> {
    autograd::Precision::from_name(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = autograd::Precision::ALL.iter().map(|p| p.name()).collect();
        format!("`{s}` is not a precision ({})", names.join(", "))
    })
}

/// What `--precision` runs on this CPU, for a warning: `Some` when bf16 is emulated (no AMX-BF16 nor
/// AVX512-BF16:
/// operands rounded to bf16, products on the f32 kernels, so bf16 numerics at f32 speed or slower).
pub fn precision_warning(p: autograd::Precision) -> Option<String> {
    (!p.is_native()).then(|| {
        format!(
            "warning: this CPU has neither AMX-BF16 nor AVX512-BF16: --precision {} runs emulated ({}: operands rounded to bf16, \
             products on the f32 kernels), with bf16 numerics at f32 speed or slower",
            p.name(),
            p.backend().name()
        )
    })
}

/// Parameters of a model of `config` (u128: a hostile config cannot overflow the count).
pub fn param_count(config: &model::config::Qwen3Config, moe: Option<&model::moe_spec::MoeSpec>) -> u128 {
    let numel = |shape: &[usize]| shape.iter().map(|&d| d as u128).product::<u128>();
    model::qwen3::param_specs(config, moe).iter().map(|(_, shape)| numel(shape)).sum()
}

/// Bytes of memory the OS can still hand out (`MemAvailable` of /proc/meminfo); None where the
/// OS does not say. The test hook `MEDMOE_FAULT_MEMORY_BYTES` pretends a smaller machine, so the
/// tests of the check do not depend on the machine's memory.
fn available_bytes() -> Option<u128> {
    let pretend = std::env::var("MEDMOE_FAULT_MEMORY_BYTES").ok().and_then(|v| v.parse::<u128>().ok());
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(pretend.map_or(kib * 1024, |p| p.min(kib * 1024)))
}

/// Human size of `bytes` (binary units).
fn human(bytes: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

/// Refuses `what` when it needs more than the available memory: `bytes` is what it allocates
/// at least (callers count only the buffers they know are held at once).
pub fn ensure_fits(what: &str, bytes: u128) -> Result<()> {
    let Some(available) = available_bytes() else { return Ok(()) };
    if bytes > available {
        bail!(
            "{what} needs at least {bytes} bytes ({}) of memory, but {} are available",
            human(bytes),
            human(available)
        );
    }
    Ok(())
}

/// The path as the file system resolves it (for a path that does not exist: its parent's
/// resolution plus the name).
fn resolved(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent().filter(|d| !d.as_os_str().is_empty()), p.file_name()) {
        (Some(dir), Some(name)) => resolved(dir).join(name),
        (None, Some(name)) => std::env::current_dir().map(|d| d.join(name)).unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    }
}

/// Checks an output path before any work: it may never be one of `inputs` (files or directories
/// the command reads) or an existing file inside an input directory, even with `--force`; an
/// existing file is replaced only with `force`.
pub fn check_output(out: &Path, inputs: &[&Path], force: bool) -> Result<()> {
    let target = resolved(out);
    let exists = out.symlink_metadata().is_ok();
    for input in inputs {
        let input = resolved(input);
        if target == input || (exists && input.is_dir() && target.starts_with(&input)) {
            bail!("{}: is an input of this command ({}); refusing to write over it", out.display(), input.display());
        }
    }
    if exists && !force {
        bail!("{}: already exists; pass --force to replace it", out.display());
    }
    if out.is_dir() {
        bail!("{}: is a directory; --out names a file", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_out_of_their_domain_are_refused() {
        assert_eq!(non_negative("0.02"), Ok(0.02));
        for bad in ["NaN", "inf", "-inf", "-0.5", "x"] {
            assert!(non_negative(bad).is_err(), "{bad}");
        }
        assert_eq!(decay("0"), Ok(0.0));
        for bad in ["1", "2", "NaN", "-0.1"] {
            assert!(decay(bad).is_err(), "{bad}");
        }
        assert_eq!(count("2e6"), Ok(2_000_000));
        assert_eq!(count("1e12"), Ok(1_000_000_000_000));
        for bad in ["0", "0e3", "1.5", "-3", "1e30", "NaN"] {
            assert!(count(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn precisions_parse_by_name_and_bad_ones_list_the_choices() {
        assert_eq!(precision("f32"), Ok(autograd::Precision::F32));
        assert_eq!(precision("bf16"), Ok(autograd::Precision::Bf16));
        for bad in ["fp16", "BF16", "", "f64"] {
            let e = precision(bad).unwrap_err();
            assert!(e.contains("is not a precision (f32, bf16)"), "{bad}: {e}");
        }
        assert_eq!(precision_warning(autograd::Precision::F32), None);
        let native = autograd::Precision::Bf16.is_native();
        assert_eq!(precision_warning(autograd::Precision::Bf16).is_none(), native);
    }

    #[test]
    fn an_allocation_beyond_memory_names_its_bytes() {
        let e = ensure_fits("--vocab 1000000000000", u128::MAX).unwrap_err().to_string();
        assert!(e.contains(&format!("{} bytes", u128::MAX)) && e.contains("available"), "{e}");
        ensure_fits("one byte", 1).unwrap();
    }

    #[test]
    fn outputs_never_clobber_inputs_or_existing_files() {
        let tmp = tempfile::tempdir().unwrap();
        let input_buf = tmp.path().join("in.jsonl");
        let input = input_buf.as_path();
        std::fs::write(input, "x").unwrap();
        let e = check_output(input, &[input], true).unwrap_err().to_string();
        assert!(e.contains("is an input"), "{e}");
        let via_dots = tmp.path().join(".").join("in.jsonl");
        assert!(check_output(&via_dots, &[input], true).is_err());
        let e = check_output(&tmp.path().join("d/x"), &[tmp.path().join("d").as_path()], false);
        assert!(e.is_ok(), "a missing directory is no input to protect");
        let other = tmp.path().join("out.jsonl");
        check_output(&other, &[input], false).unwrap();
        std::fs::write(&other, "y").unwrap();
        let e = check_output(&other, &[input], false).unwrap_err().to_string();
        assert!(e.contains("already exists") && e.contains("--force"), "{e}");
        check_output(&other, &[input], true).unwrap();
        // A file of an input directory is an input; a new file beside them is not.
        let e = check_output(input, &[tmp.path()], true).unwrap_err();
        assert!(e.to_string().contains("is an input"), "{e}");
        check_output(&tmp.path().join("new.safetensors"), &[tmp.path()], false).unwrap();
    }
}
