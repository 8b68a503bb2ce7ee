//! Reading the rows of a plan's SQL back into bucket sums.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::api::DimensionValue;
use crate::stats::{
    BucketSums, Moments,
    summary::{BucketMoments, CupedSums},
};

use super::{
    ResultLayout,
    columns::{self as col, OVERALL, POST, PRE},
};

/// A value of a result cell, engine-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SqlValue {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("the result has no column {0:?}")]
    MissingColumn(String),
    #[error("column {column:?} holds {found:?} where a {expected} was expected")]
    WrongType {
        column: String,
        expected: &'static str,
        found: SqlValue,
    },
    #[error("the result names split dimension #{0}, which the calculation does not have")]
    UnknownDimension(i64),
    #[error(
        "the sum {column:?} is {value}: a measurement is infinite or not a number, or its \
         squares overflow (values beyond about 1e154); cap the measurement or filter such rows out"
    )]
    NonFinite { column: String, value: f64 },
}

struct Row<'a> {
    index: &'a HashMap<&'a str, usize>,
    values: &'a [SqlValue],
}

impl Row<'_> {
    fn get(&self, column: &str) -> Result<&SqlValue, RowError> {
        self.index
            .get(column)
            .and_then(|i| self.values.get(*i))
            .ok_or_else(|| RowError::MissingColumn(column.to_string()))
    }

    /// An integer; SQL NULL (an empty sum) reads as 0.
    fn int(&self, column: &str) -> Result<i64, RowError> {
        match self.get(column)? {
            SqlValue::Null => Ok(0),
            SqlValue::Int(v) => Ok(*v),
            SqlValue::Float(v) if v.fract() == 0.0 => Ok(*v as i64),
            other => Err(RowError::WrongType {
                column: column.to_string(),
                expected: "integer",
                found: other.clone(),
            }),
        }
    }

    /// A finite number; SQL NULL (an empty sum) reads as 0. Infinity or NaN would
    /// make every figure built on it meaningless, and JSON cannot carry them.
    fn float(&self, column: &str) -> Result<f64, RowError> {
        match self.get(column)? {
            SqlValue::Null => Ok(0.0),
            SqlValue::Int(v) => Ok(*v as f64),
            SqlValue::Float(v) if !v.is_finite() => Err(RowError::NonFinite {
                column: column.to_string(),
                value: *v,
            }),
            SqlValue::Float(v) => Ok(*v),
            other => Err(RowError::WrongType {
                column: column.to_string(),
                expected: "number",
                found: other.clone(),
            }),
        }
    }

    fn text(&self, column: &str) -> Result<Option<String>, RowError> {
        match self.get(column)? {
            SqlValue::Null => Ok(None),
            SqlValue::Text(v) => Ok(Some(v.clone())),
            other => Err(RowError::WrongType {
                column: column.to_string(),
                expected: "text",
                found: other.clone(),
            }),
        }
    }

    /// The moments of `prefix`: its shifts `_c{i}`, shifted sums `_s{i}` and shifted
    /// products `_p{i}{j}` (sql.rs, `moments`). The raw sums the status reports are
    /// reconstructed from them and must be finite too.
    fn moments<const K: usize>(&self, prefix: &str) -> Result<Moments<K>, RowError> {
        let mut shift = [0.0; K];
        let mut sums = [0.0; K];
        for (i, (shift, sum)) in shift.iter_mut().zip(sums.iter_mut()).enumerate() {
            *shift = self.float(&col::shift(prefix, i))?;
            *sum = self.float(&col::shifted_sum(prefix, i))?;
        }
        let mut upper = Vec::with_capacity(K * (K + 1) / 2);
        for i in 0..K {
            for j in i..K {
                upper.push(self.float(&col::shifted_product(prefix, i, j))?);
            }
        }
        let moments = Moments::from_upper_triangle(
            self.int(&col::moment_count(prefix))?,
            shift,
            sums,
            &upper,
        );
        for i in 0..K {
            finite(col::shifted_sum(prefix, i), moments.sum(i))?;
            for j in i..K {
                finite(
                    col::shifted_product(prefix, i, j),
                    moments.sum_of_products(i, j),
                )?;
            }
        }
        Ok(moments)
    }

    fn cuped<const K: usize>(&self) -> Result<CupedSums<K>, RowError> {
        Ok(CupedSums {
            moments: self.moments(PRE)?,
            count_missing: self.int(col::PRE_COUNT_MISSING)?,
            count_missing_rows: self.int(col::PRE_COUNT_MISSING_ROWS)?,
        })
    }
}

fn finite(column: String, value: f64) -> Result<f64, RowError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(RowError::NonFinite { column, value })
    }
}

/// The buckets of a result, and the count of multiple-variant entities.
pub fn read_buckets(
    layout: &ResultLayout,
    columns: &[String],
    rows: &[Vec<SqlValue>],
) -> Result<(Vec<BucketSums>, i64), RowError> {
    let index: HashMap<&str, usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut multiple_variant_entities = 0;
    let mut buckets = Vec::new();
    for values in rows {
        let row = Row {
            index: &index,
            values,
        };
        multiple_variant_entities = row.int(col::MULTIPLE_VARIANT_ENTITIES)?;
        // The statement returns one row with no bucket when nobody was exposed.
        let Some(variant) = row.text(col::VARIANT)? else {
            continue;
        };
        let dimension = match row.int(col::DIMENSION_INDEX)? {
            OVERALL => None,
            i => Some(DimensionValue {
                dimension: usize::try_from(i)
                    .ok()
                    .and_then(|i| layout.dimensions.get(i))
                    .ok_or(RowError::UnknownDimension(i))?
                    .clone(),
                value: row
                    .text(col::DIMENSION_VALUE)?
                    .unwrap_or_else(|| "(null)".into()),
            }),
        };
        let values = if layout.ratio {
            BucketMoments::Ratio {
                post: row.moments(POST)?,
                cuped: layout.cuped.then(|| row.cuped()).transpose()?,
            }
        } else {
            BucketMoments::Average {
                post: row.moments(POST)?,
                cuped: layout.cuped.then(|| row.cuped()).transpose()?,
            }
        };
        buckets.push(BucketSums {
            variant,
            dimension,
            entities: row.int(col::ENTITIES)?,
            count_missing: row.int(col::COUNT_MISSING)?,
            count_missing_rows: row.int(col::COUNT_MISSING_ROWS)?,
            values,
        });
    }
    Ok((buckets, multiple_variant_entities))
}
