//! Parquet source files through the `parquet` crate's column readers (no Arrow arrays: the crate
//! is built without its `arrow` feature to keep compile time down).
//!
//! `text_fields` and `url_field` must be top-level string columns (BYTE_ARRAY, UTF8/String or
//! plain binary: the bytes are checked as UTF-8 here, so a bad value is a counted bad record, not
//! a failed file); `id_field` may also be INT32/INT64. A missing column or another type is an
//! error naming the file and the column, found by [`check_parquet_schema`] before any work.
//! Rows are read in batches of [`BATCH`] per row group; nulls count as missing.

use super::{default_id, BadKind, FileReport, RawDoc};
use crate::error::{DataError, Result};
use crate::prepare::config::SourceConfig;
use parquet::basic::{ConvertedType, Type as PhysicalType};
use parquet::column::reader::ColumnReader;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnDescriptor;
use std::path::Path;

/// Rows per read.
const BATCH: usize = 1024;

/// What a column may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Text,
    Id,
}

/// BYTE_ARRAY annotated UTF8 (writers annotate the String logical type with it too) or not at all.
fn is_string(c: &ColumnDescriptor) -> bool {
    c.physical_type() == PhysicalType::BYTE_ARRAY
        && matches!(c.converted_type(), ConvertedType::UTF8 | ConvertedType::NONE)
}

fn type_name(c: &ColumnDescriptor) -> String {
    match c.converted_type() {
        ConvertedType::NONE => format!("{:?}", c.physical_type()),
        ct => format!("{:?} ({ct:?})", c.physical_type()),
    }
}

fn open(path: &Path) -> Result<SerializedFileReader<std::fs::File>> {
    let f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    SerializedFileReader::new(f).map_err(|e| DataError::file(path, format!("not a readable Parquet file: {e}")))
}

/// Index of column `name` after checking it is a top-level flat column of the wanted kind.
fn column_index(path: &Path, reader: &SerializedFileReader<std::fs::File>, name: &str, want: Want) -> Result<usize> {
    let schema = reader.metadata().file_metadata().schema_descr();
    let all: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
    let Some(i) = all.iter().position(|c| c == name) else {
        return Err(DataError::file(path, format!("no column `{name}` (columns: {})", all.join(", "))));
    };
    let c = schema.column(i);
    let ok = c.max_rep_level() == 0
        && (is_string(&c)
            || (want == Want::Id && matches!(c.physical_type(), PhysicalType::INT32 | PhysicalType::INT64)));
    if !ok {
        let expected = if want == Want::Id { "a string or integer" } else { "a string (BYTE_ARRAY UTF8)" };
        let repeated = if c.max_rep_level() > 0 { " inside a list" } else { "" };
        return Err(DataError::file(
            path,
            format!("column `{name}` is {}{repeated}, expected {expected} column", type_name(&c)),
        ));
    }
    Ok(i)
}

/// The columns of a source in `path`: text columns, id, url.
fn columns(path: &Path, r: &SerializedFileReader<std::fs::File>, s: &SourceConfig) -> Result<Columns> {
    Ok(Columns {
        text: s.text_fields.iter().map(|f| column_index(path, r, f, Want::Text)).collect::<Result<_>>()?,
        id: s.id_field.as_deref().map(|f| column_index(path, r, f, Want::Id)).transpose()?,
        url: s.url_field.as_deref().map(|f| column_index(path, r, f, Want::Text)).transpose()?,
    })
}

struct Columns {
    text: Vec<usize>,
    id: Option<usize>,
    url: Option<usize>,
}

/// Checks that `path` is a Parquet file holding the source's columns with usable types.
pub fn check_parquet_schema(path: &Path, s: &SourceConfig) -> Result<()> {
    columns(path, &open(path)?, s).map(|_| ())
}

/// One cell.
enum Cell {
    Bytes(Vec<u8>),
    Int(i64),
}

/// Reads up to `n` rows of column `col` (nulls as `None`).
fn read_batch(reader: &mut ColumnReader, max_def: i16, n: usize) -> parquet::errors::Result<Vec<Option<Cell>>> {
    let mut def = Vec::new();
    let (records, values): (usize, Vec<Cell>) = match reader {
        ColumnReader::ByteArrayColumnReader(r) => {
            let mut v = Vec::new();
            let (rec, _, _) = r.read_records(n, Some(&mut def), None, &mut v)?;
            (rec, v.into_iter().map(|b| Cell::Bytes(b.data().to_vec())).collect())
        }
        ColumnReader::Int64ColumnReader(r) => {
            let mut v = Vec::new();
            let (rec, _, _) = r.read_records(n, Some(&mut def), None, &mut v)?;
            (rec, v.into_iter().map(Cell::Int).collect())
        }
        ColumnReader::Int32ColumnReader(r) => {
            let mut v = Vec::new();
            let (rec, _, _) = r.read_records(n, Some(&mut def), None, &mut v)?;
            (rec, v.into_iter().map(|x| Cell::Int(x as i64)).collect())
        }
        _ => return Err(parquet::errors::ParquetError::General("unsupported column type".into())),
    };
    let mut values = values.into_iter();
    if max_def == 0 {
        return Ok(values.map(Some).take(records).collect());
    }
    Ok(def.iter().take(records).map(|&d| if d == max_def { values.next() } else { None }).collect())
}

/// Streams `path`.
pub(super) fn read_file(
    s: &SourceConfig,
    path: &Path,
    report: &mut FileReport,
    on_doc: &mut dyn FnMut(RawDoc) -> Result<()>,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<()> {
    let reader = open(path)?;
    let cols = columns(path, &reader, s)?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let (mut row_no, mut seen) = (0u64, 0u64);
    for rg in 0..reader.num_row_groups() {
        let group = reader.get_row_group(rg).map_err(|e| DataError::file(path, format!("row group {rg}: {e}")))?;
        let rows = group.metadata().num_rows().max(0) as usize;
        let open_col = |i: usize| {
            group.get_column_reader(i).map_err(|e| {
                DataError::file(path, format!("row group {rg}, column `{}`: {e}", schema.column(i).path().string()))
            })
        };
        let mut text_readers: Vec<(usize, ColumnReader)> =
            cols.text.iter().map(|&i| Ok((i, open_col(i)?))).collect::<Result<_>>()?;
        let mut id_reader = cols.id.map(|i| Ok::<_, DataError>((i, open_col(i)?))).transpose()?;
        let mut url_reader = cols.url.map(|i| Ok::<_, DataError>((i, open_col(i)?))).transpose()?;
        let mut left = rows;
        while left > 0 {
            let n = left.min(BATCH);
            let read = |(i, r): &mut (usize, ColumnReader)| {
                let c = schema.column(*i);
                let cells = read_batch(r, c.max_def_level(), n).map_err(|e| {
                    DataError::file(path, format!("row group {rg}, column `{}`: {e}", c.path().string()))
                })?;
                if cells.len() != n {
                    return Err(DataError::file(
                        path,
                        format!(
                            "row group {rg}, column `{}`: {} rows read, {n} expected",
                            c.path().string(),
                            cells.len()
                        ),
                    ));
                }
                Ok(cells)
            };
            let texts: Vec<Vec<Option<Cell>>> = text_readers.iter_mut().map(&read).collect::<Result<_>>()?;
            let ids = id_reader.as_mut().map(&read).transpose()?;
            let urls = url_reader.as_mut().map(&read).transpose()?;
            for k in 0..n {
                row_no += 1;
                report.records += 1;
                let mut parts = Vec::new();
                let mut utf8_ok = true;
                for col in &texts {
                    if let Some(Cell::Bytes(b)) = &col[k] {
                        match std::str::from_utf8(b) {
                            Ok(t) => parts.push(t),
                            Err(_) => utf8_ok = false,
                        }
                    }
                }
                if !utf8_ok {
                    report.count_bad(BadKind::InvalidUtf8, || format!("row {row_no}"), &s.text_fields);
                    continue;
                }
                if parts.is_empty() {
                    report.count_bad(BadKind::MissingText, || format!("row {row_no}"), &s.text_fields);
                    continue;
                }
                let id = match ids.as_ref().and_then(|c| c[k].as_ref()) {
                    Some(Cell::Int(x)) => x.to_string(),
                    Some(Cell::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                    None => default_id(&s.name, path, row_no),
                };
                let url = match urls.as_ref().and_then(|c| c[k].as_ref()) {
                    Some(Cell::Bytes(b)) => std::str::from_utf8(b).ok().map(str::to_string),
                    _ => None,
                };
                on_doc(RawDoc { id, text: parts.join("\n\n"), url })?;
            }
            left -= n;
        }
        seen += group.metadata().compressed_size().max(0) as u64;
        on_bytes(seen);
    }
    Ok(())
}
