//! The SQL of a calculation: one statement returning the sums of every bucket.
//!
//! Shape of the statement:
//! 1. `exposure_rows` → `exposure_entities`: first exposure and the smallest and
//!    largest variant per entity (they differ for a multiple-variant entity, which is
//!    excluded and counted), and the variant of the entities kept: single-variant, in
//!    the exposure groups, with a complete window.
//! 2. `exposed`: the kept entities. The engine may compute both again at each read
//!    rather than store them (`Dialect::recomputed_cte`).
//! 3. per fact read: `facts_i` (filtered rows in the fact time range) joined once to
//!    `exposed` on the entity alone and aggregated per entity (`entity_facts_i`).
//!    Facts are the probe side and the grouping key is the fact table's column, whose
//!    statistics survive the join: with dense integer ids DuckDB then aggregates into
//!    a perfect hash table. A range condition in the join would cost more than it
//!    filters. Each fact row carries its time since the entity's first exposure in
//!    the dialect's difference type (microseconds on DuckDB, an interval on
//!    PostgreSQL), so a window is two comparisons with constants, and each window's
//!    aggregate is one over the rows where the window holds (`Dialect::aggregate_where`).
//! 4. `entity_values`: per entity, the raw and transformed (cap, missing, threshold)
//!    values of every measure, pre and post, and its dimension values.
//! 5. `pivots`: one shift per variable of the moments, its mean over the calculation,
//!    and `buckets`: additive moments per variant around those shifts, with
//!    `GROUPING SETS` for the overall and per-dimension buckets (a `UNION ALL` where
//!    the dialect has none), each moment over the rows where it is present.
//!
//! The plan is engine-neutral: the statement is built one CTE at a time by a
//! [`Compiler`], and what differs between engines comes from its [`Dialect`]. The
//! result's column names are those of `super::columns`.

pub mod dialect;

use std::cell::RefCell;
use std::fmt::Write;

use crate::api::Aggregation;

use super::columns::{self as col, OVERALL, POST, PRE};
use super::resolve::{DimensionFrom, Measure, ResolvedCalculation, Source};
pub use dialect::Dialect;

/// The statement of a resolved calculation, in `dialect`.
#[cfg(test)]
pub fn statement(c: &ResolvedCalculation, dialect: &dyn Dialect) -> String {
    statement_and_sql_sources(c, dialect).0
}

/// The statement of a resolved calculation, in `dialect`, and the `sql:` sources it
/// reads, each once: they open the statement as CTEs ([`with_sql_sources`]), so a
/// plan can carry each source's text once beside the rest of the statement.
pub fn statement_and_sql_sources(
    c: &ResolvedCalculation,
    dialect: &dyn Dialect,
) -> (String, Vec<String>) {
    let compiler = Compiler {
        c,
        d: dialect,
        sql_sources: RefCell::default(),
    };
    let mut ctes = vec![
        compiler.exposure_rows(),
        compiler.exposure_entities(),
        compiler.exposed(),
    ];
    for r in 0..c.fact_reads.len() {
        ctes.push(compiler.facts(r));
        ctes.push(compiler.entity_facts(r));
    }
    ctes.extend(compiler.dimension_tables());
    ctes.push(compiler.entity_values());
    let (pivots, buckets) = compiler.pivots_and_buckets();
    ctes.push(pivots);
    ctes.push(buckets);
    ctes.push(compiler.multiple_variants());
    let body = format!("{}\n{}", ctes.join(",\n"), compiler.result());
    let sql_sources = compiler.sql_sources.into_inner();
    (with_sql_sources(&sql_sources, &body), sql_sources)
}

/// The name of the CTE of the `index`th `sql:` source.
fn sql_source_name(index: usize) -> String {
    format!("tally_sql_source_{index}")
}

/// The statement whose CTEs after those of `sql_sources` are `body`.
pub fn with_sql_sources(sql_sources: &[String], body: &str) -> String {
    let mut ctes: Vec<String> = sql_sources
        .iter()
        .enumerate()
        .map(|(index, sql)| cte(&sql_source_name(index), sql))
        .collect();
    ctes.push(body.to_string());
    format!("WITH\n{}", ctes.join(",\n"))
}

/// What follows the CTEs of `sql_sources` in a statement built by
/// [`with_sql_sources`]; `None` for a statement that does not open with them.
pub fn after_sql_sources<'a>(statement: &'a str, sql_sources: &[String]) -> Option<&'a str> {
    statement.strip_prefix(&with_sql_sources(sql_sources, ""))
}

/// A statement that returns the columns of an `sql:` source and no row.
pub fn columns_of_sql(sql: &str) -> String {
    format!("SELECT * FROM ({sql}) AS source LIMIT 0")
}

/// A statement that returns the columns of a source and no row; `None` when the
/// dialect cannot read it.
pub fn columns_of(source: &Source, dialect: &dyn Dialect) -> Option<String> {
    let from = match source {
        Source::Files(glob) => dialect.files_columns(glob)?,
        Source::Sql(sql) => return Some(columns_of_sql(sql)),
        other => source_sql(other, None, dialect)?,
    };
    Some(format!("SELECT * FROM {from} AS source LIMIT 0"))
}

/// The SQL that reads a source. `timestamp` names the column the read takes times
/// from, if any.
fn source_sql(source: &Source, timestamp: Option<&str>, d: &dyn Dialect) -> Option<String> {
    match source {
        Source::Table(name) => Some(d.table(name)),
        Source::Sql(sql) => Some(format!("({sql})")),
        Source::Files(glob) => d.files(glob, timestamp),
    }
}

/// A named CTE.
fn cte(name: &str, body: &str) -> String {
    cte_with(name, "", body)
}

/// A named CTE with a materialization keyword (`Dialect::recomputed_cte`).
fn cte_with(name: &str, keyword: &str, body: &str) -> String {
    format!("{name} AS {keyword}(\n  {body}\n)")
}

struct Compiler<'a> {
    c: &'a ResolvedCalculation,
    d: &'a dyn Dialect,
    /// The `sql:` sources read so far, each once, by the index of its CTE.
    sql_sources: RefCell<Vec<String>>,
}

impl Compiler<'_> {
    fn ident(&self, name: &str) -> String {
        self.d.quote_ident(name)
    }

    fn ts(&self, column: &str) -> String {
        self.d.to_instant(column)
    }

    /// Resolution refuses a source its engine cannot read, so a `None` here is
    /// unreachable; the statement then fails on the warehouse, naming it.
    /// An `sql:` source is read from its CTE: its text, which may be long, stands in
    /// the statement once however many reads it has.
    fn source(&self, source: &Source, timestamp: Option<&str>) -> String {
        if let Source::Sql(sql) = source {
            let mut sql_sources = self.sql_sources.borrow_mut();
            let index = match sql_sources.iter().position(|known| known == sql) {
                Some(index) => index,
                None => {
                    sql_sources.push(sql.clone());
                    sql_sources.len() - 1
                }
            };
            return sql_source_name(index);
        }
        source_sql(source, timestamp, self.d).unwrap_or_else(|| "unreadable_source".into())
    }

    fn only_where(&self, function: &str, value: &str, condition: &str) -> String {
        self.d.aggregate_where(function, false, value, condition)
    }

    /// The number of rows where `condition` holds.
    fn count_where(&self, condition: &str) -> String {
        self.only_where("count", "1", condition)
    }

    fn exposure_dimensions(&self) -> impl Iterator<Item = (usize, &String)> {
        self.c
            .dimensions
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match &d.from {
                DimensionFrom::Exposure { column } => Some((i, column)),
                DimensionFrom::Table { .. } => None,
            })
    }

    /// Step 1: exposure rows in the exposure range.
    fn exposure_rows(&self) -> String {
        let (e, t, d) = (&self.c.exposure, &self.c.times, self.d);
        let dims: String = self
            .exposure_dimensions()
            .map(|(i, column)| format!(",\n    {} AS dim_{i}", d.text(&self.ident(column))))
            .collect();
        let ts = self.ts(&self.ident(&e.timestamp));
        cte(
            "exposure_rows",
            &format!(
                "SELECT {entity} AS entity, {ts} AS ts, {variant} AS variant{dims}\n  FROM {source} AS exposure_source\n  WHERE {entity} IS NOT NULL\n    AND {ts} >= {start} AND {ts} < {end}",
                entity = self.ident(&e.entity),
                variant = d.text(&self.ident(&e.variant)),
                source = self.source(&e.source, Some(&e.timestamp)),
                start = d.instant(t.exposure_start),
                end = d.instant(t.exposure_end),
            ),
        )
    }

    /// First exposure, smallest and largest variant, and the first row's exposure
    /// dimensions per entity, and its variant when the entity is kept (else NULL).
    ///
    /// Whether an entity is kept is a column, not a `WHERE`: a filter on aggregates
    /// has no statistics, so PostgreSQL would estimate it keeps 0.5% of the entities
    /// and then hash the facts instead of the entities. `IS NOT NULL` on the column
    /// is estimated to keep nearly all, which is the common case.
    fn exposure_entities(&self) -> String {
        let (c, d) = (self.c, self.d);
        // The first row's value, a null one included; of rows at the same first
        // time, the smallest value wins (nulls last), so the result does not depend
        // on row order.
        let dims: String = self
            .exposure_dimensions()
            .map(|(i, _)| {
                let first = d.first_by(
                    &format!("dim_{i}"),
                    &["ts".to_string(), format!("dim_{i}")],
                    false,
                );
                format!(",\n    {first} AS dim_{i}")
            })
            .collect();
        // One variant per entity: its smallest and largest variant agree (cheaper
        // than counting distinct variants).
        let mut kept = String::from("min(variant) = max(variant)");
        if !c.exposure_groups.is_empty() {
            let groups: Vec<String> = c
                .exposure_groups
                .iter()
                .map(|g| d.quote_literal(g))
                .collect();
            let _ = write!(kept, " AND min(variant) IN ({})", groups.join(", "));
        }
        if let Some(end) = c.window_end {
            // A closed window counts only once it is complete.
            let _ = write!(
                kept,
                " AND {} <= {}",
                d.add_duration("min(ts)", end),
                d.instant(c.times.fact_end)
            );
        }
        cte_with(
            "exposure_entities",
            d.recomputed_cte(),
            &format!(
                "SELECT entity, min(ts) AS first_exposure, min(variant) AS variant, max(variant) AS last_variant,\n    CASE WHEN {kept} THEN min(variant) END AS kept_variant{dims}\n  FROM exposure_rows\n  GROUP BY entity"
            ),
        )
    }

    /// Step 2: the kept entities.
    fn exposed(&self) -> String {
        let d = self.d;
        let dims: String = self
            .exposure_dimensions()
            .map(|(i, _)| format!(", dim_{i}"))
            .collect();
        cte_with(
            "exposed",
            d.recomputed_cte(),
            &format!(
                "SELECT entity, first_exposure, {} AS first_exposure_key, kept_variant AS variant{dims}\n  FROM exposure_entities\n  WHERE kept_variant IS NOT NULL",
                d.instant_key("first_exposure")
            ),
        )
    }

    /// The windows a measure is aggregated over, by phase, in the dialect's
    /// difference of instants (`since`).
    fn windows(&self) -> Vec<(&'static str, String)> {
        let (c, d) = (self.c, self.d);
        let post_end = c
            .window_end
            .map(|end| format!(" AND since < {}", d.duration(end)))
            .unwrap_or_default();
        let mut windows = vec![(
            POST,
            format!("since >= {}{post_end}", d.duration(c.window_offset)),
        )];
        if let Some(pre) = c.pre_exposure_window {
            windows.push((
                PRE,
                format!(
                    "since >= {} AND since < {}",
                    d.duration(-pre),
                    d.duration(jiff::SignedDuration::ZERO)
                ),
            ));
        }
        windows
    }

    fn measures_of(&self, r: usize) -> impl Iterator<Item = (usize, &Measure)> {
        self.c
            .measures
            .iter()
            .enumerate()
            .filter(move |(_, m)| m.read == r)
    }

    /// Step 3: the rows of fact read `r` in the fact range, with the values its
    /// measures read.
    fn facts(&self, r: usize) -> String {
        let (read, t, d) = (&self.c.fact_reads[r], &self.c.times, self.d);
        let values: String = self
            .measures_of(r)
            .map(|(m, measure)| {
                // Counts read the column as it is (any type: they only ask whether
                // it is null); the other aggregations are arithmetic on numbers.
                let value = match (&measure.column, measure.aggregation) {
                    (None, _) => "1".to_string(),
                    (Some(col), Aggregation::Count | Aggregation::CountDistinct) => self.ident(col),
                    (Some(col), _) => d.to_float(&self.ident(col)),
                };
                format!(", {value} AS v{m}")
            })
            .collect();
        let filter = read
            .filter
            .as_ref()
            .map(|f| format!("({f}) AND "))
            .unwrap_or_default();
        let ts = self.ts(&self.ident(&read.timestamp));
        cte(
            &format!("facts_{r}"),
            &format!(
                "SELECT {entity} AS entity, {ts} AS ts{values}\n  FROM {source} AS fact_source\n  WHERE {filter}{ts} >= {start} AND {ts} < {end}",
                entity = self.ident(&read.entity),
                source = self.source(&read.source, Some(&read.timestamp)),
                start = d.instant(t.fact_start),
                end = d.instant(t.fact_end),
            ),
        )
    }

    /// The per-entity aggregate over one window, NULL when the window holds no value
    /// (the entity is then missing): sums, means and extremes are NULL by
    /// themselves, counts are 0 and become NULL.
    fn aggregate(&self, measure: &Measure, value: &str, window: &str) -> String {
        let d = self.d;
        let aggregate = match measure.aggregation {
            Aggregation::Sum => self.only_where("sum", value, window),
            Aggregation::Count => format!("nullif({}, 0)", self.only_where("count", value, window)),
            Aggregation::CountDistinct => format!(
                "nullif({}, 0)",
                d.aggregate_where("count", true, value, window)
            ),
            Aggregation::Mean => self.only_where("avg", value, window),
            Aggregation::Max => self.only_where("max", value, window),
            Aggregation::Min => self.only_where("min", value, window),
        };
        d.to_float(&aggregate)
    }

    /// Fact read `r` joined to the kept entities and aggregated per entity and window.
    fn entity_facts(&self, r: usize) -> String {
        let mut joined_values = String::new();
        let mut aggregates = String::new();
        let windows = self.windows();
        for (m, measure) in self.measures_of(r) {
            let _ = write!(joined_values, ", f.v{m}");
            let v = format!("v{m}");
            for (phase, window) in &windows {
                let _ = write!(
                    aggregates,
                    ",\n    {} AS {phase}_raw{m}",
                    self.aggregate(measure, &v, window)
                );
                // A count of rows reads no column, so none of its rows lacks a value.
                let null_rows = match measure.column {
                    Some(_) => self.count_where(&format!("{window} AND {v} IS NULL")),
                    None => "0".to_string(),
                };
                let _ = write!(aggregates, ",\n    {null_rows} AS {phase}_null_rows{m}");
            }
        }
        cte(
            &format!("entity_facts_{r}"),
            &format!(
                "SELECT entity{aggregates}\n  FROM (\n    SELECT f.entity, {} - e.first_exposure_key AS since{joined_values}\n    FROM facts_{r} AS f\n    JOIN exposed AS e ON f.entity = e.entity\n  ) AS since_exposure\n  GROUP BY entity",
                self.d.instant_key("f.ts")
            ),
        )
    }

    /// Dimension tables: the value per kept entity.
    fn dimension_tables(&self) -> Vec<String> {
        let d = self.d;
        let mut out = Vec::new();
        for (i, dimension) in self.c.dimensions.iter().enumerate() {
            let DimensionFrom::Table {
                source,
                entity,
                column,
                timestamp: valid_from,
            } = &dimension.from
            else {
                continue;
            };
            let value = d.text(&format!("d.{}", self.ident(column)));
            let ent = self.ident(entity);
            let body = match valid_from {
                Some(valid_from) => {
                    let vf = self.ts(&format!("d.{}", self.ident(valid_from)));
                    // Of rows valid from the same time, the largest value wins, as
                    // for duplicates without a validity time.
                    let latest = d.first_by(
                        &value,
                        &[vf.clone(), format!("{value} IS NOT NULL"), value.clone()],
                        true,
                    );
                    format!(
                        "SELECT e.entity, {latest} AS value\n  FROM exposed AS e\n  JOIN {src} AS d ON d.{ent} = e.entity AND {vf} <= e.first_exposure\n  GROUP BY e.entity",
                        src = self.source(source, Some(valid_from)),
                    )
                }
                // One row per entity is expected; duplicates resolve to the largest value.
                None => format!(
                    "SELECT d.{ent} AS entity, max({value}) AS value\n  FROM {src} AS d\n  GROUP BY d.{ent}",
                    src = self.source(source, None),
                ),
            };
            out.push(cte(&format!("dimension_{i}"), &body));
        }
        out
    }

    fn phases(&self) -> Vec<&'static str> {
        if self.c.pre_exposure_window.is_some() {
            vec![POST, PRE]
        } else {
            vec![POST]
        }
    }

    /// Per-entity value after cap, null handling and threshold, in that order.
    fn transformed(&self, measure: &Measure, raw: &str) -> String {
        let d = self.d;
        let mut value = raw.to_string();
        if let Some(min) = measure.cap_min {
            value = format!(
                "CASE WHEN {value} < {m} THEN {m} ELSE {value} END",
                m = d.float(min)
            );
        }
        if let Some(max) = measure.cap_max {
            value = format!(
                "CASE WHEN {value} > {m} THEN {m} ELSE {value} END",
                m = d.float(max)
            );
        }
        if measure.replace_missing_with_zero {
            value = format!("coalesce({value}, {})", d.float(0.0));
        }
        if let Some((operator, threshold)) = measure.threshold {
            value = format!(
                "CASE WHEN {value} IS NULL THEN NULL WHEN {value} {} {} THEN {} ELSE {} END",
                operator.sql(),
                d.float(threshold),
                d.float(1.0),
                d.float(0.0)
            );
        }
        value
    }

    /// Step 4: per-entity values.
    fn entity_values(&self) -> String {
        let c = self.c;
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
        for (m, measure) in c.measures.iter().enumerate() {
            for phase in self.phases() {
                let raw = format!("f{}.{phase}_raw{m}", measure.read);
                let _ = write!(
                    columns,
                    ",\n    {raw} AS {phase}_raw{m},\n    {} AS {phase}_value{m},\n    coalesce(f{}.{phase}_null_rows{m}, 0) AS {phase}_null_rows{m}",
                    self.transformed(measure, &raw),
                    measure.read
                );
            }
        }
        cte(
            "entity_values",
            &format!("SELECT {columns}\n  FROM exposed AS e{joins}"),
        )
    }

    /// Sums of the variables and of their pairwise products over rows where
    /// `present`, each variable taken around its shift, so that variances and
    /// covariances do not cancel catastrophically when a mean is far from zero
    /// (`stats::Moments`).
    ///
    /// A variable's shift is its mean over the calculation's rows where `present`,
    /// rounded to an integer when every value is one (the rule of
    /// `Moments::from_observations`): one value for every bucket, so the shifted sums
    /// of the buckets add as the raw ones do, and integer data keep exact integer
    /// sums. The shifts are columns of the `pivots` CTE (their expressions are pushed
    /// to `pivots`); `aggregates` gets the count, shifted sums and shifted products
    /// (`columns`).
    fn moments(
        &self,
        aggregates: &mut Vec<String>,
        pivots: &mut Vec<String>,
        prefix: &str,
        variables: &[String],
        present: &str,
    ) {
        let d = self.d;
        aggregates.push(format!(
            "{} AS {}",
            self.count_where(present),
            col::moment_count(prefix)
        ));
        let mut shifted = Vec::with_capacity(variables.len());
        for (i, v) in variables.iter().enumerate() {
            let shift = col::shift(prefix, i);
            pivots.push(format!(
                "coalesce(CASE WHEN {} THEN round({avg}) ELSE {avg} END, {}) AS {shift}",
                self.only_where("bool_and", &format!("{v} = round({v})"), present),
                d.float(0.0),
                avg = self.only_where("avg", v, present),
            ));
            shifted.push(format!("({v} - {shift})"));
        }
        for (i, v) in shifted.iter().enumerate() {
            aggregates.push(format!(
                "{} AS {}",
                self.only_where("sum", v, present),
                col::shifted_sum(prefix, i)
            ));
        }
        for i in 0..shifted.len() {
            for j in i..shifted.len() {
                let product = format!("{} * {}", shifted[i], shifted[j]);
                aggregates.push(format!(
                    "{} AS {}",
                    self.only_where("sum", &product, present),
                    col::shifted_product(prefix, i, j)
                ));
            }
        }
    }

    /// Step 5: the shifts of the moments, and the moments per bucket.
    fn pivots_and_buckets(&self) -> (String, String) {
        let c = self.c;
        let measures: Vec<usize> = (0..c.measures.len()).collect();
        let joined = |phase: &str, each: &dyn Fn(&str, usize) -> String, separator: &str| {
            measures
                .iter()
                .map(|m| each(phase, *m))
                .collect::<Vec<_>>()
                .join(separator)
        };
        let all_present =
            |phase: &str| joined(phase, &|p, m| format!("{p}_value{m} IS NOT NULL"), " AND ");
        let any_raw_missing =
            |phase: &str| joined(phase, &|p, m| format!("{p}_raw{m} IS NULL"), " OR ");
        let null_rows = |phase: &str| joined(phase, &|p, m| format!("{p}_null_rows{m}"), " + ");
        let post_values: Vec<String> = measures.iter().map(|m| format!("post_value{m}")).collect();
        let post_present = all_present(POST);
        let mut aggregates = vec![
            format!("count(*) AS {}", col::ENTITIES),
            format!(
                "{} AS {}",
                self.count_where(&any_raw_missing(POST)),
                col::COUNT_MISSING
            ),
            format!("sum({}) AS {}", null_rows(POST), col::COUNT_MISSING_ROWS),
        ];
        let mut pivots = Vec::new();
        self.moments(
            &mut aggregates,
            &mut pivots,
            POST,
            &post_values,
            &post_present,
        );
        if c.pre_exposure_window.is_some() {
            aggregates.push(format!(
                "{} AS {}",
                self.count_where(&format!("({post_present}) AND ({})", any_raw_missing(PRE))),
                col::PRE_COUNT_MISSING
            ));
            aggregates.push(format!(
                "sum({}) AS {}",
                null_rows(PRE),
                col::PRE_COUNT_MISSING_ROWS
            ));
            // Pre values first, then post: [x, y] or [a, b, y, d].
            let mut variables: Vec<String> =
                measures.iter().map(|m| format!("pre_value{m}")).collect();
            variables.extend(post_values.iter().cloned());
            let both = format!("{post_present} AND {}", all_present(PRE));
            self.moments(&mut aggregates, &mut pivots, PRE, &variables, &both);
        }
        let pivots = cte(
            "pivots",
            &format!("SELECT {}\n  FROM entity_values", pivots.join(",\n    ")),
        );
        let aggregates = aggregates.join(",\n    ");
        let buckets = if self.d.grouping_sets() {
            self.grouping_sets(&aggregates)
        } else {
            self.union_of_groups(&aggregates)
        };
        (pivots, cte("buckets", &buckets))
    }

    /// The buckets in one grouping: per variant, and per variant and dimension value.
    fn grouping_sets(&self, aggregates: &str) -> String {
        let dimensions = self.c.dimensions.len();
        let mut sets = vec!["(variant)".to_string()];
        let (index, value) = if dimensions == 0 {
            (OVERALL.to_string(), self.d.null_text())
        } else {
            let mut index = String::from("CASE");
            let mut value = String::from("CASE");
            for i in 0..dimensions {
                sets.push(format!("(variant, dim_{i})"));
                let _ = write!(index, " WHEN grouping(dim_{i}) = 0 THEN {i}");
                let _ = write!(value, " WHEN grouping(dim_{i}) = 0 THEN dim_{i}");
            }
            let _ = write!(index, " ELSE {OVERALL} END");
            value.push_str(" END");
            (index, value)
        };
        format!(
            "SELECT variant,\n    {index} AS {},\n    {value} AS {},\n    {aggregates}\n  FROM entity_values\n  CROSS JOIN pivots\n  GROUP BY GROUPING SETS ({})",
            col::DIMENSION_INDEX,
            col::DIMENSION_VALUE,
            sets.join(", ")
        )
    }

    /// The same buckets as [`Self::grouping_sets`], one `GROUP BY` each.
    fn union_of_groups(&self, aggregates: &str) -> String {
        let overall = (OVERALL.to_string(), self.d.null_text(), String::new());
        let per_dimension = (0..self.c.dimensions.len())
            .map(|i| (i.to_string(), format!("dim_{i}"), format!(", dim_{i}")));
        std::iter::once(overall)
            .chain(per_dimension)
            .map(|(index, value, group)| {
                format!(
                    "SELECT variant,\n    {index} AS {},\n    {value} AS {},\n    {aggregates}\n  FROM entity_values\n  CROSS JOIN pivots\n  GROUP BY variant{group}",
                    col::DIMENSION_INDEX,
                    col::DIMENSION_VALUE,
                )
            })
            .collect::<Vec<_>>()
            .join("\n  UNION ALL\n  ")
    }

    fn multiple_variants(&self) -> String {
        cte(
            "multiple_variants",
            &format!(
                "SELECT count(*) AS {} FROM exposure_entities WHERE variant <> last_variant",
                col::MULTIPLE_VARIANT_ENTITIES
            ),
        )
    }

    /// One row per bucket, each with the shifts and the multiple-variant count; one
    /// row with no bucket when nobody was exposed.
    fn result(&self) -> String {
        format!(
            "SELECT m.{}, p.*, b.*\nFROM multiple_variants AS m\nCROSS JOIN pivots AS p\nLEFT JOIN buckets AS b ON true\nORDER BY b.{}, b.{}, b.{}\n",
            col::MULTIPLE_VARIANT_ENTITIES,
            col::VARIANT,
            col::DIMENSION_INDEX,
            col::DIMENSION_VALUE
        )
    }
}
