//! The names of the result's columns: the statement (`sql`) writes them and `rows`
//! reads them back by name, so each is spelled here once.

/// The count of entities exposed to more than one variant, on every row.
pub const MULTIPLE_VARIANT_ENTITIES: &str = "multiple_variant_entities";
pub const VARIANT: &str = "variant";
/// The split dimension a bucket belongs to, by index, or [`OVERALL`].
pub const DIMENSION_INDEX: &str = "dimension_index";
pub const DIMENSION_VALUE: &str = "dimension_value";
pub const ENTITIES: &str = "entities";
pub const COUNT_MISSING: &str = "count_missing";
pub const COUNT_MISSING_ROWS: &str = "count_missing_rows";
pub const PRE_COUNT_MISSING: &str = "pre_count_missing";
pub const PRE_COUNT_MISSING_ROWS: &str = "pre_count_missing_rows";

/// The dimension index of the overall bucket.
pub const OVERALL: i64 = -1;

/// The moments of the post-exposure values, and of pre and post values together
/// (CUPED).
pub const POST: &str = "post";
pub const PRE: &str = "pre";

/// The number of entities a set of moments counts.
pub fn moment_count(prefix: &str) -> String {
    format!("{prefix}_n")
}

/// The shift of variable `i` (its mean over the calculation).
pub fn shift(prefix: &str, i: usize) -> String {
    format!("{prefix}_c{i}")
}

/// Σ(v_i − c_i).
pub fn shifted_sum(prefix: &str, i: usize) -> String {
    format!("{prefix}_s{i}")
}

/// Σ(v_i − c_i)(v_j − c_j), for i ≤ j.
pub fn shifted_product(prefix: &str, i: usize, j: usize) -> String {
    format!("{prefix}_p{i}{j}")
}
