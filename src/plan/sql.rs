//! The SQL of a calculation: one statement returning the sums of every bucket.
//!
//! Shape of the statement:
//! 1. `exposure_rows` → `exposure_entities`: first exposure and the smallest and
//!    largest variant per entity (they differ for a multiple-variant entity, which is
//!    excluded and counted).
//! 2. `exposed`: single-variant entities in the exposure groups whose window is complete.
//! 3. per fact read: `facts_i` (filtered rows in the fact time range) joined once to
//!    `exposed` on the entity alone and aggregated per entity (`entity_facts_i`).
//!    Facts are the probe side and the grouping key is the fact table's column, whose
//!    statistics survive the join: with dense integer ids DuckDB then aggregates into
//!    a perfect hash table. A range condition in the join would cost more than it
//!    filters. Each fact row carries its time since the entity's first exposure in
//!    microseconds, so a window is two integer comparisons with constants, and each
//!    window's aggregate reads a `CASE` of the value: one pass over the rows updates
//!    every aggregate, where a `FILTER` clause per aggregate would select the rows
//!    once per aggregate.
//! 4. `entity_values`: per entity, the raw and transformed (cap, missing, threshold)
//!    values of every measure, pre and post, and its dimension values.
//! 5. `pivots`: one shift per variable of the moments, its mean over the calculation,
//!    and `buckets`: additive moments per variant around those shifts, with
//!    `GROUPING SETS` for the overall and per-dimension buckets, each moment over a
//!    `CASE` of its value as in 3.

use std::fmt::Write;

use jiff::{SignedDuration, Timestamp};

use crate::api::Aggregation;

use super::resolve::{DimensionFrom, Measure, ResolvedCalculation, Source};

/// The dimension name of the overall bucket in the result rows.
pub(crate) const OVERALL: i64 = -1;

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn qualified(name: &str) -> String {
    name.split('.')
        .map(quote_ident)
        .collect::<Vec<_>>()
        .join(".")
}

fn timestamp(t: Timestamp) -> String {
    // DuckDB's TIMESTAMP is zone-less; every time in a plan is UTC.
    format!("TIMESTAMP '{}'", t.strftime("%Y-%m-%d %H:%M:%S%.f"))
}

fn interval(d: SignedDuration) -> String {
    format!("to_microseconds({})", micros(d.as_micros()))
}

/// Microseconds as a BIGINT; durations are bounded in resolution (`MAX_WINDOW`), so
/// they fit.
fn micros(us: i128) -> String {
    format!("{us}::BIGINT")
}

fn float(value: f64) -> String {
    // `{:?}` keeps a decimal point (1.0, not 1) and round-trips exactly.
    format!("CAST({value:?} AS DOUBLE)")
}

/// The SQL that reads a source. `timestamp` names the column the read takes times
/// from, if any.
fn source_sql(source: &Source, timestamp: Option<&str>) -> String {
    match source {
        Source::Table(name) => qualified(name),
        Source::Sql(sql) => format!("({sql})"),
        Source::Files(glob) => {
            let lower = glob.to_ascii_lowercase();
            if lower.ends_with(".parquet") {
                format!("read_parquet({})", quote_literal(glob))
            } else {
                // Types come from the whole file, not a sample of its first rows: a
                // column whose first 20k values are integers may hold decimals later.
                // The time column is read as an instant, so a UTC offset on any row
                // counts (a zone-less TIMESTAMP column would drop it silently).
                let types = timestamp
                    .map(|column| format!(", types = {{{}: 'TIMESTAMPTZ'}}", quote_literal(column)))
                    .unwrap_or_default();
                format!(
                    "read_csv({}, header = true, sample_size = -1{types})",
                    quote_literal(glob)
                )
            }
        }
    }
}

/// A statement that returns the columns of a source and no row. CSV files are sniffed
/// from a sample here: the names come from the header either way.
pub fn columns_of(source: &Source) -> String {
    let from = match source {
        Source::Files(glob) if !glob.to_ascii_lowercase().ends_with(".parquet") => {
            format!("read_csv({}, header = true)", quote_literal(glob))
        }
        other => source_sql(other, None),
    };
    format!("SELECT * FROM {from} AS source LIMIT 0")
}

/// A time column as a UTC TIMESTAMP. Text is read as an instant (`TIMESTAMPTZ`), so a
/// UTC offset in it counts, and text without one is UTC; the build's DuckDB has no
/// ICU extension, so its TIMESTAMPTZ arithmetic is in UTC. `typeof` is resolved when
/// the statement is bound, so a TIMESTAMP column (Parquet, tables) keeps a plain,
/// free cast that DuckDB can still push into the scan as a filter.
fn ts(expression: &str) -> String {
    format!(
        "CASE WHEN typeof({expression}) = 'VARCHAR' THEN CAST(CAST({expression} AS TIMESTAMPTZ) AS TIMESTAMP) ELSE CAST({expression} AS TIMESTAMP) END"
    )
}

/// The per-entity aggregate over one window, NULL when the window holds no value (the
/// entity is then missing): sums, means and extremes are NULL by themselves, counts
/// are 0 and become NULL. Rows outside the window read as NULL, which every
/// aggregate skips.
fn aggregate(measure: &Measure, value: &str, window: &str) -> String {
    let v = only_where(window, value);
    let aggregate = match measure.aggregation {
        Aggregation::Sum => format!("sum({v})"),
        Aggregation::Count => format!("nullif(count({v}), 0)"),
        Aggregation::CountDistinct => format!("nullif(count(DISTINCT {v}), 0)"),
        Aggregation::Mean => format!("avg({v})"),
        Aggregation::Max => format!("max({v})"),
        Aggregation::Min => format!("min({v})"),
    };
    format!("CAST({aggregate} AS DOUBLE)")
}

/// Per-entity value after cap, null handling and threshold, in that order.
fn transformed(measure: &Measure, raw: &str) -> String {
    let mut value = raw.to_string();
    if measure.cap_min.is_some() || measure.cap_max.is_some() {
        let mut capped = value.clone();
        if let Some(min) = measure.cap_min {
            capped = format!(
                "CASE WHEN {capped} < {m} THEN {m} ELSE {capped} END",
                m = float(min)
            );
        }
        if let Some(max) = measure.cap_max {
            capped = format!(
                "CASE WHEN {capped} > {m} THEN {m} ELSE {capped} END",
                m = float(max)
            );
        }
        value = capped;
    }
    if measure.replace_missing_with_zero {
        value = format!("coalesce({value}, CAST(0 AS DOUBLE))");
    }
    if let Some((operator, threshold)) = measure.threshold {
        value = format!(
            "CASE WHEN {value} IS NULL THEN NULL WHEN {value} {} {} THEN CAST(1 AS DOUBLE) ELSE CAST(0 AS DOUBLE) END",
            operator.sql(),
            float(threshold)
        );
    }
    value
}

/// Sums of the variables and of their pairwise products over rows where `present`,
/// each variable taken around its shift, so that variances and covariances do not
/// cancel catastrophically when a mean is far from zero (`stats::Moments`).
///
/// A variable's shift `{prefix}_c{i}` is its mean over the calculation's rows where
/// `present`, rounded to an integer when every value is one (the rule of
/// `Moments::from_observations`): one value for every bucket, so the shifted sums of
/// the buckets add as the raw ones do, and integer data keep exact integer sums. The
/// shifts are columns of the `pivots` CTE (their expressions are pushed to `pivots`).
/// `aggregates` gets `{prefix}_n`, the shifted sums `{prefix}_s{i}` = Σ(v_i − c_i) and
/// the shifted products `{prefix}_p{i}{j}` = Σ(v_i − c_i)(v_j − c_j).
fn moments(
    aggregates: &mut String,
    pivots: &mut Vec<String>,
    prefix: &str,
    variables: &[String],
    present: &str,
) {
    let _ = write!(aggregates, ",\n    {} AS {prefix}_n", count_where(present));
    let mut shifted = Vec::with_capacity(variables.len());
    for (i, v) in variables.iter().enumerate() {
        let shift = format!("{prefix}_c{i}");
        let value = only_where(present, v);
        pivots.push(format!(
            "coalesce(CASE WHEN bool_and({value} = round({value})) THEN round(avg({value})) ELSE avg({value}) END, CAST(0 AS DOUBLE)) AS {shift}"
        ));
        shifted.push(format!("({v} - {shift})"));
    }
    for (i, v) in shifted.iter().enumerate() {
        let _ = write!(
            aggregates,
            ",\n    sum({}) AS {prefix}_s{i}",
            only_where(present, v)
        );
    }
    for i in 0..shifted.len() {
        for j in i..shifted.len() {
            let product = format!("{} * {}", shifted[i], shifted[j]);
            let _ = write!(
                aggregates,
                ",\n    sum({}) AS {prefix}_p{i}{j}",
                only_where(present, &product)
            );
        }
    }
}

/// `value` on rows where `condition` holds, NULL elsewhere, which every aggregate
/// skips: what windows and buckets aggregate instead of a `FILTER` each (module doc).
fn only_where(condition: &str, value: &str) -> String {
    format!("CASE WHEN {condition} THEN {value} END")
}

/// The number of rows where `condition` holds.
fn count_where(condition: &str) -> String {
    format!("count({})", only_where(condition, "1"))
}

/// The DuckDB statement of a resolved calculation.
pub fn duckdb(c: &ResolvedCalculation) -> String {
    let t = &c.times;
    let cuped = c.pre_exposure_window.is_some();
    let mut sql = String::from("WITH\n");

    // 1. Exposures.
    let e = &c.exposure;
    let mut dims_select = String::new();
    let mut dims_first = String::new();
    for (i, d) in c.dimensions.iter().enumerate() {
        if let DimensionFrom::Exposure { column } = &d.from {
            let _ = write!(
                dims_select,
                ",\n    CAST({} AS VARCHAR) AS dim_{i}",
                quote_ident(column)
            );
            // arg_min_null keeps a null value of the first row instead of skipping it;
            // of rows at the same first time, the smallest value wins (nulls last), so
            // the result does not depend on row order.
            let _ = write!(
                dims_first,
                ",\n    arg_min_null(dim_{i}, (ts, dim_{i})) AS dim_{i}"
            );
        }
    }
    let _ = write!(
        sql,
        "exposure_rows AS (\n  SELECT {entity} AS entity, {ts} AS ts, CAST({variant} AS VARCHAR) AS variant{dims_select}\n  FROM {source} AS exposure_source\n  WHERE {entity} IS NOT NULL\n    AND {ts} >= {start} AND {ts} < {end}\n),\n",
        entity = quote_ident(&e.entity),
        ts = ts(&quote_ident(&e.timestamp)),
        variant = quote_ident(&e.variant),
        source = source_sql(&e.source, Some(&e.timestamp)),
        start = timestamp(t.exposure_start),
        end = timestamp(t.exposure_end),
    );
    let _ = write!(
        sql,
        "exposure_entities AS (\n  SELECT entity, min(ts) AS first_exposure, min(variant) AS variant, max(variant) AS last_variant{dims_first}\n  FROM exposure_rows\n  GROUP BY entity\n),\n"
    );

    // 2. Kept entities.
    // One variant per entity: its smallest and largest variant agree (cheaper than
    // counting distinct variants).
    let mut kept = String::from("variant = last_variant");
    if !c.exposure_groups.is_empty() {
        let groups: Vec<String> = c.exposure_groups.iter().map(|g| quote_literal(g)).collect();
        let _ = write!(kept, " AND variant IN ({})", groups.join(", "));
    }
    if let Some(end) = c.window_end {
        // A closed window counts only once it is complete.
        let _ = write!(
            kept,
            " AND first_exposure + {} <= {}",
            interval(end),
            timestamp(t.fact_end)
        );
    }
    let exposure_dims: String = c
        .dimensions
        .iter()
        .enumerate()
        .filter(|(_, d)| matches!(d.from, DimensionFrom::Exposure { .. }))
        .map(|(i, _)| format!(", dim_{i}"))
        .collect();
    let _ = write!(
        sql,
        "exposed AS (\n  SELECT entity, first_exposure, epoch_us(first_exposure) AS first_exposure_us, variant{exposure_dims}\n  FROM exposure_entities\n  WHERE {kept}\n),\n"
    );

    // 3. Facts per read, aggregated per entity over the pre and post windows, in
    // microseconds since the first exposure.
    let post_end = c
        .window_end
        .map(|end| format!(" AND since < {}", micros(end.as_micros())))
        .unwrap_or_default();
    let post_window = format!("since >= {}{post_end}", micros(c.window_offset.as_micros()));
    let pre_window = c
        .pre_exposure_window
        .map(|pre| format!("since >= {} AND since < 0", micros(-pre.as_micros())));
    for (r, read) in c.fact_reads.iter().enumerate() {
        let mut values = String::new();
        let mut joined_values = String::new();
        let mut aggregates = String::new();
        for (m, measure) in c.measures.iter().enumerate() {
            if measure.read != r {
                continue;
            }
            // Counts read the column as it is (any type: they only ask whether it is
            // null); the other aggregations are arithmetic on numbers.
            let value = match (&measure.column, measure.aggregation) {
                (None, _) => "1".to_string(),
                (Some(col), Aggregation::Count | Aggregation::CountDistinct) => quote_ident(col),
                (Some(col), _) => format!("CAST({} AS DOUBLE)", quote_ident(col)),
            };
            let _ = write!(values, ", {value} AS v{m}");
            let _ = write!(joined_values, ", f.v{m}");
            let mut windows = vec![("post", post_window.clone())];
            if let Some(pre) = &pre_window {
                windows.push(("pre", pre.clone()));
            }
            for (name, window) in windows {
                let v = format!("v{m}");
                let _ = write!(
                    aggregates,
                    ",\n    {agg} AS {name}_raw{m}",
                    agg = aggregate(measure, &v, &window),
                );
                // A count of rows reads no column, so none of its rows lacks a value.
                let null_rows = match measure.column {
                    Some(_) => count_where(&format!("{window} AND {v} IS NULL")),
                    None => "0".to_string(),
                };
                let _ = write!(aggregates, ",\n    {null_rows} AS {name}_null_rows{m}");
            }
        }
        let filter = read
            .filter
            .as_ref()
            .map(|f| format!("({f}) AND "))
            .unwrap_or_default();
        let _ = write!(
            sql,
            "facts_{r} AS (\n  SELECT {entity} AS entity, {ts} AS ts{values}\n  FROM {source} AS fact_source\n  WHERE {filter}{ts} >= {start} AND {ts} < {end}\n),\n",
            entity = quote_ident(&read.entity),
            ts = ts(&quote_ident(&read.timestamp)),
            source = source_sql(&read.source, Some(&read.timestamp)),
            start = timestamp(t.fact_start),
            end = timestamp(t.fact_end),
        );
        let _ = write!(
            sql,
            "entity_facts_{r} AS (\n  SELECT entity{aggregates}\n  FROM (\n    SELECT f.entity, epoch_us(f.ts) - e.first_exposure_us AS since{joined_values}\n    FROM facts_{r} AS f\n    JOIN exposed AS e ON f.entity = e.entity\n  )\n  GROUP BY entity\n),\n"
        );
    }

    // Dimension tables: the value per kept entity.
    for (i, d) in c.dimensions.iter().enumerate() {
        if let DimensionFrom::Table {
            source,
            entity,
            column,
            timestamp: valid_from,
        } = &d.from
        {
            let value = format!("CAST(d.{} AS VARCHAR)", quote_ident(column));
            let body = match valid_from {
                Some(valid_from) => format!(
                    // Of rows valid from the same time, the largest value wins, as
                    // for duplicates without a validity time.
                    "SELECT e.entity, arg_max_null({value}, ({vf}, {value} IS NOT NULL, {value})) AS value\n  FROM exposed AS e\n  JOIN {src} AS d ON d.{ent} = e.entity AND {vf} <= e.first_exposure\n  GROUP BY e.entity",
                    vf = ts(&format!("d.{}", quote_ident(valid_from))),
                    src = source_sql(source, Some(valid_from)),
                    ent = quote_ident(entity),
                ),
                // One row per entity is expected; duplicates resolve to the largest value.
                None => format!(
                    "SELECT d.{ent} AS entity, max({value}) AS value\n  FROM {src} AS d\n  GROUP BY d.{ent}",
                    ent = quote_ident(entity),
                    src = source_sql(source, None),
                ),
            };
            let _ = write!(sql, "dimension_{i} AS (\n  {body}\n),\n");
        }
    }

    // 4. Per-entity values.
    let mut columns = String::from("e.variant");
    let mut joins = String::new();
    for (i, d) in c.dimensions.iter().enumerate() {
        match &d.from {
            DimensionFrom::Exposure { .. } => {
                let _ = write!(columns, ",\n    coalesce(e.dim_{i}, '(null)') AS dim_{i}");
            }
            DimensionFrom::Table { .. } => {
                let _ = write!(
                    columns,
                    ",\n    coalesce(dimension_{i}.value, '(null)') AS dim_{i}"
                );
                let _ = write!(
                    joins,
                    "\n  LEFT JOIN dimension_{i} ON dimension_{i}.entity = e.entity"
                );
            }
        }
    }
    for r in 0..c.fact_reads.len() {
        let _ = write!(
            joins,
            "\n  LEFT JOIN entity_facts_{r} AS f{r} ON f{r}.entity = e.entity"
        );
    }
    let mut phases = vec!["post"];
    if cuped {
        phases.push("pre");
    }
    for (m, measure) in c.measures.iter().enumerate() {
        for phase in &phases {
            let raw = format!("f{}.{phase}_raw{m}", measure.read);
            let _ = write!(
                columns,
                ",\n    {raw} AS {phase}_raw{m},\n    {} AS {phase}_value{m},\n    coalesce(f{}.{phase}_null_rows{m}, 0) AS {phase}_null_rows{m}",
                transformed(measure, &raw),
                measure.read
            );
        }
    }
    let _ = write!(
        sql,
        "entity_values AS (\n  SELECT {columns}\n  FROM exposed AS e{joins}\n),\n"
    );

    // 5. Buckets.
    let measure_indices: Vec<usize> = (0..c.measures.len()).collect();
    let all_present = |phase: &str| {
        measure_indices
            .iter()
            .map(|m| format!("{phase}_value{m} IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let any_raw_missing = |phase: &str| {
        measure_indices
            .iter()
            .map(|m| format!("{phase}_raw{m} IS NULL"))
            .collect::<Vec<_>>()
            .join(" OR ")
    };
    let null_rows = |phase: &str| {
        measure_indices
            .iter()
            .map(|m| format!("{phase}_null_rows{m}"))
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let post_values: Vec<String> = measure_indices
        .iter()
        .map(|m| format!("post_value{m}"))
        .collect();
    let post_present = all_present("post");
    let mut aggregates = format!(
        "count(*) AS entities,\n    {} AS count_missing,\n    sum({}) AS count_missing_rows",
        count_where(&any_raw_missing("post")),
        null_rows("post"),
    );
    let mut pivots = Vec::new();
    moments(
        &mut aggregates,
        &mut pivots,
        "post",
        &post_values,
        &post_present,
    );
    if cuped {
        let _ = write!(
            aggregates,
            ",\n    {} AS pre_count_missing,\n    sum({}) AS pre_count_missing_rows",
            count_where(&format!(
                "({post_present}) AND ({})",
                any_raw_missing("pre")
            )),
            null_rows("pre"),
        );
        // Pre values first, then post: [x, y] or [a, b, y, d].
        let mut variables: Vec<String> = measure_indices
            .iter()
            .map(|m| format!("pre_value{m}"))
            .collect();
        variables.extend(post_values.iter().cloned());
        let both = format!("{post_present} AND {}", all_present("pre"));
        moments(&mut aggregates, &mut pivots, "pre", &variables, &both);
    }
    let mut grouping_sets = vec!["(variant)".to_string()];
    let mut dimension_index = String::new();
    let mut dimension_value = String::new();
    if c.dimensions.is_empty() {
        let _ = write!(dimension_index, "{OVERALL}");
        dimension_value.push_str("CAST(NULL AS VARCHAR)");
    } else {
        dimension_index.push_str("CASE");
        dimension_value.push_str("CASE");
        for i in 0..c.dimensions.len() {
            grouping_sets.push(format!("(variant, dim_{i})"));
            let _ = write!(dimension_index, " WHEN grouping(dim_{i}) = 0 THEN {i}");
            let _ = write!(dimension_value, " WHEN grouping(dim_{i}) = 0 THEN dim_{i}");
        }
        let _ = write!(dimension_index, " ELSE {OVERALL} END");
        dimension_value.push_str(" END");
    }
    let _ = write!(
        sql,
        "pivots AS (\n  SELECT {}\n  FROM entity_values\n),\n",
        pivots.join(",\n    ")
    );
    let _ = write!(
        sql,
        "buckets AS (\n  SELECT variant,\n    {dimension_index} AS dimension_index,\n    {dimension_value} AS dimension_value,\n    {aggregates}\n  FROM entity_values\n  CROSS JOIN pivots\n  GROUP BY GROUPING SETS ({})\n),\n",
        grouping_sets.join(", ")
    );
    let _ = write!(
        sql,
        "multiple_variants AS (\n  SELECT count(*) AS multiple_variant_entities FROM exposure_entities WHERE variant <> last_variant\n)\nSELECT m.multiple_variant_entities, p.*, b.*\nFROM multiple_variants AS m\nCROSS JOIN pivots AS p\nLEFT JOIN buckets AS b ON true\nORDER BY b.variant, b.dimension_index, b.dimension_value\n"
    );
    sql
}
