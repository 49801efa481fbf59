//! A small Parquet writer of flat optional string / integer columns (snappy pages), for tests,
//! benchmarks and tools that need Parquet input; the reader is `parquet.rs`.

use crate::error::{DataError, Result};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use std::path::Path;
use std::sync::Arc;

/// One column's values (`None` is null).
#[derive(Clone, Debug)]
pub enum ColumnData {
    /// BYTE_ARRAY (UTF8) values; the bytes are written as given, valid UTF-8 or not.
    Strings(Vec<Option<Vec<u8>>>),
    /// INT64 values.
    Ints(Vec<Option<i64>>),
}

impl ColumnData {
    fn len(&self) -> usize {
        match self {
            ColumnData::Strings(v) => v.len(),
            ColumnData::Ints(v) => v.len(),
        }
    }
}

/// Writes `columns` (equal lengths) to `path`, `rows_per_group` rows per row group.
pub fn write_parquet(path: &Path, columns: &[(&str, ColumnData)], rows_per_group: usize) -> Result<()> {
    let err = |e: parquet::errors::ParquetError| DataError::file(path, e.to_string());
    let rows = columns.first().map_or(0, |(_, c)| c.len());
    if columns.iter().any(|(_, c)| c.len() != rows) || rows_per_group == 0 {
        return Err(DataError::config("parquet columns", "columns of different lengths or empty row groups"));
    }
    let fields: Vec<String> = columns
        .iter()
        .map(|(name, c)| match c {
            ColumnData::Strings(_) => format!("OPTIONAL BYTE_ARRAY {name} (UTF8);"),
            ColumnData::Ints(_) => format!("OPTIONAL INT64 {name};"),
        })
        .collect();
    let schema = Arc::new(parse_message_type(&format!("message doc {{ {} }}", fields.join(" "))).map_err(err)?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::SNAPPY).build());
    let file = std::fs::File::create(path).map_err(|e| DataError::io(path, e))?;
    let mut w = SerializedFileWriter::new(file, schema, props).map_err(err)?;
    let mut start = 0;
    while start < rows {
        let end = (start + rows_per_group).min(rows);
        let mut group = w.next_row_group().map_err(err)?;
        let mut i = 0;
        while let Some(mut col) = group.next_column().map_err(err)? {
            match &columns[i].1 {
                ColumnData::Strings(v) => {
                    let vals: Vec<ByteArray> =
                        v[start..end].iter().flatten().map(|b| ByteArray::from(b.clone())).collect();
                    let def: Vec<i16> = v[start..end].iter().map(|x| x.is_some() as i16).collect();
                    col.typed::<ByteArrayType>().write_batch(&vals, Some(&def), None).map_err(err)?;
                }
                ColumnData::Ints(v) => {
                    let vals: Vec<i64> = v[start..end].iter().flatten().copied().collect();
                    let def: Vec<i16> = v[start..end].iter().map(|x| x.is_some() as i16).collect();
                    col.typed::<Int64Type>().write_batch(&vals, Some(&def), None).map_err(err)?;
                }
            }
            col.close().map_err(err)?;
            i += 1;
        }
        group.close().map_err(err)?;
        start = end;
    }
    w.close().map_err(err)?;
    Ok(())
}
