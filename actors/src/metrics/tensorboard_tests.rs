use super::*;
use crate::metrics::tfrecord::RECORD_OVERHEAD;

/// Writer name TensorBoard's own `EventFileWriter` puts into the header.
const TB_WRITER: &str = "tensorboard.summary.writer.event_file_writer";
/// The constants of tools/gen_tfevents_fixture.py.
const HEADER_WALL_TIME: f64 = 1700000000.25;
const RESUME_STEP: u64 = 6;
fn scalars() -> Vec<(String, u64, f64, f64)> {
    vec![
        ("train/loss".into(), 0, 1700000001.5, 2.75),
        ("train/lr".into(), 1, 1700000002.125, 3.0e-4),
        ("train/loss".into(), 1, 1700000002.125, 0.0),
        ("train/grad_norm".into(), 2, 1700000003.0, -1.5),
        ("eval/ppl_m\u{e9}dical".into(), 3, 1700000004.0625, f64::NAN),
        ("train/overflow".into(), 4, 1700000005.0, f64::INFINITY),
        (format!("train/{}", "x".repeat(130)), 5, 1700000006.0, 1.0),
        ("train/loss".into(), 5_000_000_000, 1700000007.75, 0.1),
    ]
}

fn fixture_file() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tfevents_a");
    let files = event_files(&dir).unwrap();
    assert_eq!(files.len(), 1, "one event file in {}", dir.display());
    files[0].clone()
}

/// Writes the fixture's events with our writer; returns the file.
fn write_ours(dir: &Path) -> PathBuf {
    let mut w = EventWriter::create_at(dir, HEADER_WALL_TIME, Some(RESUME_STEP)).unwrap();
    for (tag, step, wall, value) in scalars() {
        w.scalar(&tag, step, wall, value).unwrap();
    }
    w.flush().unwrap();
    w.path().to_path_buf()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn records_match_the_tensorboard_writer_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let ours_path = write_ours(tmp.path());
    let theirs = read_records(&fixture_file()).unwrap();
    let ours = read_records(&ours_path).unwrap();
    assert_eq!(ours.len(), theirs.len(), "record count");
    // Record 0 differs only in source_metadata.writer; the encoder reproduces theirs exactly.
    assert_eq!(hex(&Event::header(HEADER_WALL_TIME, TB_WRITER).encode()), hex(&theirs[0]), "header encoding");
    assert_eq!(hex(&Event::header(HEADER_WALL_TIME, SOURCE_WRITER).encode()), hex(&ours[0]));
    let (a, b) = (Event::decode(&ours[0]).unwrap(), Event::decode(&theirs[0]).unwrap());
    assert_eq!((a.wall_time, a.step, &a.what), (b.wall_time, b.step, &b.what));
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate().skip(1) {
        assert_eq!(hex(o), hex(t), "record {i}");
    }
    // Framing (lengths and masked crcs) of everything after the header is identical too.
    let ours_bytes = std::fs::read(&ours_path).unwrap();
    let theirs_bytes = std::fs::read(fixture_file()).unwrap();
    let (so, st) = (ours[0].len() + RECORD_OVERHEAD, theirs[0].len() + RECORD_OVERHEAD);
    assert_eq!(hex(&ours_bytes[so..]), hex(&theirs_bytes[st..]));
}

#[test]
fn reader_decodes_our_file() {
    let tmp = tempfile::tempdir().unwrap();
    let events = read_events(&write_ours(tmp.path())).unwrap();
    assert_eq!(events.len(), 2 + scalars().len());
    assert_eq!(events[0].what, EventWhat::FileVersion(FILE_VERSION.into()));
    assert_eq!(events[0].wall_time, HEADER_WALL_TIME);
    assert_eq!(events[0].source_writer.as_deref(), Some(SOURCE_WRITER));
    assert_eq!(events[1].what, EventWhat::SessionLog(SESSION_START));
    assert_eq!(events[1].step, RESUME_STEP as i64 + 1);
    for (ev, (tag, step, wall, value)) in events[2..].iter().zip(scalars()) {
        assert_eq!((ev.step, ev.wall_time), (step as i64, wall));
        let EventWhat::Summary(values) = &ev.what else { panic!("not a summary: {ev:?}") };
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].tag, tag);
        let got = values[0].simple_value.unwrap();
        assert!(got == value as f32 || (got.is_nan() && value.is_nan()), "{tag}: {got} vs {value}");
    }
}

#[test]
fn reader_reports_corrupted_crc_with_the_file_name() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_ours(tmp.path());
    let good = std::fs::read(&path).unwrap();
    for at in [good.len() / 2, good.len() - 1, 3] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let err = read_events(&path).unwrap_err();
        assert!(matches!(err, MetricsError::Corrupt { .. }), "byte {at}: {err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }
}

#[test]
fn file_names_follow_the_tensorboard_pattern_and_never_collide() {
    let tmp = tempfile::tempdir().unwrap();
    let a = EventWriter::create_at(tmp.path(), HEADER_WALL_TIME, None).unwrap();
    let b = EventWriter::create_at(tmp.path(), HEADER_WALL_TIME, None).unwrap();
    assert_ne!(a.path(), b.path());
    let name = a.path().file_name().unwrap().to_string_lossy().to_string();
    let parts: Vec<&str> = name.strip_prefix("events.out.tfevents.").unwrap().split('.').collect();
    assert_eq!(parts[0], "1700000000");
    assert_eq!(parts[parts.len() - 2], std::process::id().to_string());
    assert!(parts[parts.len() - 1].parse::<u64>().is_ok(), "{name}");
    assert_eq!(event_files(tmp.path()).unwrap().len(), 2);
    // Without a resume step there is only the header.
    drop(a);
    assert_eq!(read_events(&event_files(tmp.path()).unwrap()[0]).unwrap().len(), 1);
}

#[test]
fn decode_rejects_truncated_messages_and_skips_unknown_fields() {
    let full = Event::scalar("train/loss", 3, 1.5, 2.0).encode();
    // wall_time (9 bytes) and step (2 bytes) come first; any cut inside the summary is an error.
    for cut in 12..full.len() {
        assert!(Event::decode(&full[..cut]).is_err(), "cut at {cut}");
    }
    // Unknown field 8 (length-delimited) and 12 (varint) in front of a known event.
    let mut extra = vec![0x42, 0x02, 0xaa, 0xbb, 0x60, 0x05];
    extra.extend_from_slice(&full);
    assert_eq!(Event::decode(&extra).unwrap(), Event::scalar("train/loss", 3, 1.5, 2.0));
    // Negative steps take ten varint bytes and come back.
    let neg = Event::scalar("t", -2, 0.0, 1.0);
    assert_eq!(Event::decode(&neg.encode()).unwrap(), neg);
}
