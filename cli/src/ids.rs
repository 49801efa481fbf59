//! Parsing token ids given on the command line: rows separated by `;`, ids by `,`.

use anyhow::{bail, Context, Result};

/// `"1,2,3;4,5,6"` → `[[1,2,3],[4,5,6]]`; every row must have the same length.
pub fn parse_id_rows(text: &str) -> Result<Vec<Vec<u32>>> {
    let rows: Vec<Vec<u32>> = text
        .split(';')
        .enumerate()
        .map(|(r, row)| {
            row.split(',')
                .enumerate()
                .map(|(c, id)| {
                    let id = id.trim();
                    id.parse::<u32>().with_context(|| format!("--ids row {r}, item {c}: `{id}` is not a token id"))
                })
                .collect::<Result<Vec<u32>>>()
        })
        .collect::<Result<_>>()?;
    let t = rows[0].len();
    if let Some((r, row)) = rows.iter().enumerate().find(|(_, row)| row.len() != t) {
        bail!("--ids: row {r} has {} ids but row 0 has {t}; rows must have equal length", row.len());
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_rejects_ragged_or_bad_ids() {
        assert_eq!(parse_id_rows("1,2,3;4, 5,6").unwrap(), vec![vec![1, 2, 3], vec![4, 5, 6]]);
        assert_eq!(parse_id_rows("7").unwrap(), vec![vec![7]]);
        assert!(parse_id_rows("1,2;3").unwrap_err().to_string().contains("row 1"));
        assert!(parse_id_rows("1,x").unwrap_err().to_string().contains("`x`"));
        assert!(parse_id_rows("").is_err());
        assert!(parse_id_rows("-1").is_err());
    }
}
