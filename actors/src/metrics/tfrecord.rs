//! TFRecord framing, the container of TensorBoard event files.
//!
//! A record is `u64 length (LE) | u32 masked crc32c(length bytes) | data | u32 masked crc32c(data)`,
//! with `mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping).

use std::io::Write;
use std::path::Path;

use super::MetricsError;

/// The constant TensorFlow adds to a rotated crc32c.
const MASK_DELTA: u32 = 0xa282_ead8;

/// Bytes of framing around a record's data (length 8 + two crcs of 4).
pub const RECORD_OVERHEAD: usize = 16;

/// The masked crc32c (Castagnoli) TFRecord stores for `bytes`.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    // ((crc >> 15) | (crc << 17)) + MASK_DELTA
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Appends one framed record holding `data` to `out`.
pub fn frame_record(out: &mut Vec<u8>, data: &[u8]) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

/// Writes one framed record holding `data` to `w` (one `write_all`).
pub fn write_record(w: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(data.len() + RECORD_OVERHEAD);
    frame_record(&mut buf, data);
    w.write_all(&buf)
}

/// Splits a whole TFRecord file into its records' data, verifying both crcs of every record.
/// `path` only names the file in errors. A truncated tail (a crash mid-record) is an error too.
pub fn split_records(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<u8>>, MetricsError> {
    let corrupt = |offset: usize, what: String| MetricsError::Corrupt { path: path.to_path_buf(), offset, what };
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < 12 {
            return Err(corrupt(pos, format!("truncated record header ({} of 12 bytes)", rest.len())));
        }
        let len_bytes = &rest[..8];
        let stored = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
        let expect = masked_crc32c(len_bytes);
        if stored != expect {
            return Err(corrupt(pos, format!("length crc mismatch: stored {stored:#010x}, computed {expect:#010x}")));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let avail = (rest.len() - 12).saturating_sub(4) as u64;
        if len > avail {
            return Err(corrupt(pos, format!("truncated record: length {len}, {avail} data bytes left")));
        }
        let len = len as usize;
        let data = &rest[12..12 + len];
        let stored = u32::from_le_bytes(rest[12 + len..16 + len].try_into().expect("4 bytes"));
        let expect = masked_crc32c(data);
        if stored != expect {
            return Err(corrupt(pos, format!("data crc mismatch: stored {stored:#010x}, computed {expect:#010x}")));
        }
        records.push(data.to_vec());
        pos += len + RECORD_OVERHEAD;
    }
    Ok(records)
}

/// Reads a TFRecord file and returns its records' data (crcs verified).
pub fn read_records(path: &Path) -> Result<Vec<Vec<u8>>, MetricsError> {
    let bytes = std::fs::read(path).map_err(|e| MetricsError::io(path, e))?;
    split_records(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_castagnoli_check_value() {
        // The standard check value of CRC-32C over "123456789".
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c(b"123456789")
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn frame_then_split_round_trips() {
        let mut buf = Vec::new();
        frame_record(&mut buf, b"");
        frame_record(&mut buf, b"hello");
        frame_record(&mut buf, &[7u8; 300]);
        let recs = split_records(Path::new("mem"), &buf).unwrap();
        assert_eq!(recs, vec![b"".to_vec(), b"hello".to_vec(), vec![7u8; 300]]);
    }

    #[test]
    fn split_rejects_flipped_bits_and_truncation() {
        let mut buf = Vec::new();
        frame_record(&mut buf, b"hello");
        frame_record(&mut buf, b"world");
        let first = 5 + RECORD_OVERHEAD;
        // Data byte of the second record.
        let mut bad = buf.clone();
        bad[first + 12] ^= 1;
        let err = split_records(Path::new("f.tfevents"), &bad).unwrap_err();
        let MetricsError::Corrupt { offset, what, .. } = &err else { panic!("{err:?}") };
        assert!(*offset == first && what.contains("data crc"), "{err}");
        assert!(err.to_string().contains("f.tfevents"), "{err}");
        // Length of the first record.
        let mut bad = buf.clone();
        bad[0] ^= 1;
        let err = split_records(Path::new("f"), &bad).unwrap_err();
        assert!(matches!(err, MetricsError::Corrupt { offset: 0, ref what, .. } if what.contains("length crc")));
        // Truncated tail.
        let err = split_records(Path::new("f"), &buf[..buf.len() - 1]).unwrap_err();
        let MetricsError::Corrupt { offset, what, .. } = &err else { panic!("{err:?}") };
        assert!(*offset == first && what.contains("truncated"), "{err}");
    }
}
