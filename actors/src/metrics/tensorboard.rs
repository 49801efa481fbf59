//! TensorBoard event files, written by hand: TFRecord framing ([`super::tfrecord`]) around a
//! hand-encoded protobuf `Event`.
//!
//! The subset of `tensorboard/compat/proto/event.proto` and `summary.proto` we write and read:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2;
//!           oneof what { string file_version = 3; Summary summary = 5; SessionLog session_log = 7; }
//!           SourceMetadata source_metadata = 10; }
//! Summary { repeated Value value = 1; }   Value { string tag = 1; oneof value { float simple_value = 2; } }
//! SessionLog { SessionStatus status = 1; }  (START = 1)      SourceMetadata { string writer = 1; }
//! ```
//!
//! Encoding follows proto3 as the reference serializer does: fields in number order, scalars with
//! implicit presence (`wall_time`, `step`, `tag`, `status`, `writer`) are left out when zero/empty,
//! oneof members and sub-messages are always written. Other fields are skipped when reading.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::tfrecord::{read_records, write_record};
use super::MetricsError;

/// `file_version` of the first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";
/// Name we put into the header's `source_metadata.writer`.
pub const SOURCE_WRITER: &str = "medmoe.actors.metrics";
/// `SessionLog.SessionStatus.START`.
pub const SESSION_START: i32 = 1;

/// What an event carries (the `what` oneof).
#[derive(Clone, Debug, PartialEq)]
pub enum EventWhat {
    /// No member set, or one we do not decode.
    None,
    /// `file_version` (the header).
    FileVersion(String),
    /// `summary` with its values.
    Summary(Vec<SummaryValue>),
    /// `session_log` with its status (START = 1 marks a restart: older steps >= `step` are orphaned).
    SessionLog(i32),
}

/// One `Summary.Value`.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryValue {
    /// Tag, e.g. `train/loss`.
    pub tag: String,
    /// `simple_value` if the value is a scalar.
    pub simple_value: Option<f32>,
}

/// One decoded or to-be-encoded `Event`.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    /// Global step.
    pub step: i64,
    /// The payload.
    pub what: EventWhat,
    /// `source_metadata.writer`, if present.
    pub source_writer: Option<String>,
}

/// A malformed protobuf message.
#[derive(Debug, thiserror::Error)]
#[error("malformed protobuf at byte {offset}: {what}")]
pub struct DecodeError {
    /// Byte offset inside the message.
    pub offset: usize,
    /// What was wrong.
    pub what: String,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

impl Event {
    /// A scalar event with one `simple_value`.
    pub fn scalar(tag: &str, step: i64, wall_time: f64, value: f32) -> Event {
        let value = SummaryValue { tag: tag.to_string(), simple_value: Some(value) };
        Event { wall_time, step, what: EventWhat::Summary(vec![value]), source_writer: None }
    }

    /// The header event: `file_version = "brain.Event:2"` and `source_metadata.writer = writer`.
    pub fn header(wall_time: f64, writer: &str) -> Event {
        let what = EventWhat::FileVersion(FILE_VERSION.to_string());
        Event { wall_time, step: 0, what, source_writer: Some(writer.to_string()) }
    }

    /// Protobuf wire bytes of this event.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        if self.wall_time.to_bits() != 0 {
            put_key(&mut out, 1, 1);
            out.extend_from_slice(&self.wall_time.to_le_bytes());
        }
        if self.step != 0 {
            put_key(&mut out, 2, 0);
            put_varint(&mut out, self.step as u64);
        }
        match &self.what {
            EventWhat::None => {}
            EventWhat::FileVersion(v) => put_bytes(&mut out, 3, v.as_bytes()),
            EventWhat::Summary(values) => {
                let mut summary = Vec::new();
                for v in values {
                    let mut value = Vec::new();
                    if !v.tag.is_empty() {
                        put_bytes(&mut value, 1, v.tag.as_bytes());
                    }
                    if let Some(x) = v.simple_value {
                        put_key(&mut value, 2, 5);
                        value.extend_from_slice(&x.to_le_bytes());
                    }
                    put_bytes(&mut summary, 1, &value);
                }
                put_bytes(&mut out, 5, &summary);
            }
            EventWhat::SessionLog(status) => {
                let mut log = Vec::new();
                if *status != 0 {
                    put_key(&mut log, 1, 0);
                    put_varint(&mut log, *status as i64 as u64);
                }
                put_bytes(&mut out, 7, &log);
            }
        }
        if let Some(writer) = &self.source_writer {
            let mut meta = Vec::new();
            if !writer.is_empty() {
                put_bytes(&mut meta, 1, writer.as_bytes());
            }
            put_bytes(&mut out, 10, &meta);
        }
        out
    }

    /// Decodes an `Event` from protobuf wire bytes; unknown fields are skipped.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        let mut ev = Event { wall_time: 0.0, step: 0, what: EventWhat::None, source_writer: None };
        let mut r = Reader { bytes, pos: 0 };
        while !r.done() {
            let (field, wire) = r.key()?;
            match (field, wire) {
                (1, 1) => ev.wall_time = f64::from_le_bytes(r.fixed::<8>()?),
                (2, 0) => ev.step = r.varint()? as i64,
                (3, 2) => ev.what = EventWhat::FileVersion(r.string()?),
                (5, 2) => ev.what = EventWhat::Summary(decode_summary(r.bytes()?)?),
                (7, 2) => {
                    let mut status = 0i32;
                    let mut log = Reader { bytes: r.bytes()?, pos: 0 };
                    while !log.done() {
                        match log.key()? {
                            (1, 0) => status = log.varint()? as i32,
                            (_, w) => log.skip(w)?,
                        }
                    }
                    ev.what = EventWhat::SessionLog(status);
                }
                (10, 2) => {
                    let mut writer = String::new();
                    let mut meta = Reader { bytes: r.bytes()?, pos: 0 };
                    while !meta.done() {
                        match meta.key()? {
                            (1, 2) => writer = meta.string()?,
                            (_, w) => meta.skip(w)?,
                        }
                    }
                    ev.source_writer = Some(writer);
                }
                (_, w) => r.skip(w)?,
            }
        }
        Ok(ev)
    }
}

fn decode_summary(bytes: &[u8]) -> Result<Vec<SummaryValue>, DecodeError> {
    let mut values = Vec::new();
    let mut r = Reader { bytes, pos: 0 };
    while !r.done() {
        match r.key()? {
            (1, 2) => {
                let mut v = SummaryValue { tag: String::new(), simple_value: None };
                let mut vr = Reader { bytes: r.bytes()?, pos: 0 };
                while !vr.done() {
                    match vr.key()? {
                        (1, 2) => v.tag = vr.string()?,
                        (2, 5) => v.simple_value = Some(f32::from_le_bytes(vr.fixed::<4>()?)),
                        (_, w) => vr.skip(w)?,
                    }
                }
                values.push(v);
            }
            (_, w) => r.skip(w)?,
        }
    }
    Ok(values)
}

/// Cursor over one protobuf message.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn err(&self, what: &str) -> DecodeError {
        DecodeError { offset: self.pos, what: what.to_string() }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.bytes.get(self.pos) else { return Err(self.err("truncated varint")) };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn key(&mut self) -> Result<(u32, u8), DecodeError> {
        let k = self.varint()?;
        let field = u32::try_from(k >> 3).map_err(|_| self.err("field number out of range"))?;
        Ok((field, (k & 7) as u8))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() - self.pos < n {
            return Err(self.err(&format!("truncated field: {n} bytes wanted")));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| self.err("length out of range"))?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let at = self.pos;
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError { offset: at, what: "string is not UTF-8".into() })
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.take(8).map(|_| ()),
            2 => self.bytes().map(|_| ()),
            5 => self.take(4).map(|_| ()),
            w => Err(self.err(&format!("unsupported wire type {w}"))),
        }
    }
}

/// Reads every event of a file, verifying the crcs and decoding each record.
pub fn read_events(path: &Path) -> Result<Vec<Event>, MetricsError> {
    read_records(path)?
        .iter()
        .enumerate()
        .map(|(i, rec)| {
            Event::decode(rec).map_err(|e| MetricsError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                what: format!("record {i}: {e}"),
            })
        })
        .collect()
}

/// The event files (`events.out.tfevents.*`) directly inside `dir`, sorted by name
/// (as TensorBoard orders them: by creation second, then host, pid and counter as text).
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, MetricsError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| MetricsError::io(dir, e))? {
        let entry = entry.map_err(|e| MetricsError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with("events.out.tfevents.") {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Seconds since the Unix epoch, as TensorBoard's `wall_time`.
pub fn now_wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// This process's counter of event files (the `<n>` of the file name).
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Host name for the file name: `/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `localhost`;
/// characters that cannot sit in a file name become `_`.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String =
        raw.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    if host.is_empty() {
        "localhost".to_string()
    } else {
        host
    }
}

/// Appends events to a new file `events.out.tfevents.<secs>.<hostname>.<pid>.<n>` in a directory.
///
/// Events are buffered; [`EventWriter::flush`] pushes them to the OS (dropping the writer flushes
/// too, ignoring errors).
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates a new event file in `dir` (created if missing) stamped with the current time.
    pub fn create(dir: &Path) -> Result<EventWriter, MetricsError> {
        EventWriter::create_at(dir, now_wall_time(), None)
    }

    /// Creates a new event file in `dir` whose header has `wall_time`. With `resume_step = Some(s)`
    /// it also writes a `SessionLog START` event at step `s + 1`, so that TensorBoard hides the steps
    /// after `s` that older files of the directory recorded before the run was resumed.
    pub fn create_at(dir: &Path, wall_time: f64, resume_step: Option<u64>) -> Result<EventWriter, MetricsError> {
        std::fs::create_dir_all(dir).map_err(|e| MetricsError::io(dir, e))?;
        let secs = if wall_time.is_finite() && wall_time > 0.0 { wall_time as u64 } else { 0 };
        let (host, pid) = (hostname(), std::process::id());
        let (path, file) = loop {
            let n = FILE_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("events.out.tfevents.{secs:010}.{host}.{pid}.{n}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (path, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(MetricsError::io(&path, e)),
            }
        };
        let mut w = EventWriter { path, out: BufWriter::new(file) };
        w.write_event(&Event::header(wall_time, SOURCE_WRITER))?;
        if let Some(s) = resume_step {
            let step = i64::try_from(s.saturating_add(1)).unwrap_or(i64::MAX);
            let start = Event { wall_time, step, what: EventWhat::SessionLog(SESSION_START), source_writer: None };
            w.write_event(&start)?;
        }
        w.flush()?;
        Ok(w)
    }

    /// Path of the file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event.
    pub fn write_event(&mut self, event: &Event) -> Result<(), MetricsError> {
        write_record(&mut self.out, &event.encode()).map_err(|e| MetricsError::io(&self.path, e))
    }

    /// Appends a scalar (`simple_value`, stored as f32; NaN and infinities are kept).
    pub fn scalar(&mut self, tag: &str, step: u64, wall_time: f64, value: f64) -> Result<(), MetricsError> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        self.write_event(&Event::scalar(tag, step, wall_time, value as f32))
    }

    /// Pushes buffered events to the OS.
    pub fn flush(&mut self) -> Result<(), MetricsError> {
        self.out.flush().map_err(|e| MetricsError::io(&self.path, e))
    }
}

#[cfg(test)]
#[path = "tensorboard_tests.rs"]
mod tests;
