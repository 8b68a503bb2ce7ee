//! What differs between the SQL of two engines; the compiler (`super`) asks a
//! [`Dialect`] for it and writes everything else once.

use jiff::{SignedDuration, Timestamp};

use crate::api::Engine;

/// The pieces of SQL an engine spells its own way. Every time in a plan is UTC.
pub trait Dialect {
    fn quote_ident(&self, name: &str) -> String {
        format!("\"{}\"", name.replace('"', "\"\""))
    }

    fn quote_literal(&self, text: &str) -> String {
        format!("'{}'", text.replace('\'', "''"))
    }

    /// A table name, schema-qualified when it has dots.
    fn table(&self, name: &str) -> String {
        name.split('.')
            .map(|part| self.quote_ident(part))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// How the engine reads a `files` source (`timestamp` names the column read as
    /// an instant, if any); `None` when it cannot, which resolution refuses first.
    fn files(&self, glob: &str, timestamp: Option<&str>) -> Option<String>;

    /// The same, for a look at the columns only.
    fn files_columns(&self, glob: &str) -> Option<String> {
        self.files(glob, None)
    }

    /// The type of the floating-point values and sums.
    fn float_type(&self) -> &'static str;

    fn float(&self, value: f64) -> String {
        // `{:?}` keeps a decimal point (1.0, not 1) and round-trips exactly.
        format!("CAST({value:?} AS {})", self.float_type())
    }

    fn to_float(&self, expression: &str) -> String {
        format!("CAST({expression} AS {})", self.float_type())
    }

    /// An expression as text that compares byte by byte (variants and dimension
    /// values order and group the same on every engine).
    fn text(&self, expression: &str) -> String;

    /// A NULL of the text type.
    fn null_text(&self) -> String;

    /// An instant literal.
    fn instant(&self, t: Timestamp) -> String;

    /// A time column as an instant: text with a UTC offset counts it, text without
    /// one is UTC, a zone-less timestamp is UTC.
    fn to_instant(&self, expression: &str) -> String;

    /// What instants are turned into so that the difference of two is comparable
    /// with [`Self::duration`].
    fn instant_key(&self, instant: &str) -> String;

    /// A duration, comparable with the difference of two [`Self::instant_key`]s.
    fn duration(&self, d: SignedDuration) -> String;

    /// An instant plus a duration.
    fn add_duration(&self, instant: &str, d: SignedDuration) -> String;

    /// `function([DISTINCT] value)` over the rows where `condition` holds.
    fn aggregate_where(
        &self,
        function: &str,
        distinct: bool,
        value: &str,
        condition: &str,
    ) -> String;

    /// Of a group's rows, the `value` of the first in the order of `keys` (all
    /// ascending, or all descending when `largest`), keeping a NULL value; of NULL
    /// keys, non-NULL ones come first.
    fn first_by(&self, value: &str, keys: &[String], largest: bool) -> String;

    /// The keyword (with its trailing space) of a CTE that is cheaper recomputed at
    /// each read than stored: the kept entities, which the fact joins need with the
    /// table's statistics to plan well. Empty for the engine's default.
    fn recomputed_cte(&self) -> &'static str {
        ""
    }

    /// Whether `GROUP BY GROUPING SETS` and `grouping()` are available; without
    /// them, the buckets are a `UNION ALL` of one `GROUP BY` per set.
    fn grouping_sets(&self) -> bool {
        true
    }
}

/// The dialect of an engine.
pub fn of(engine: Engine) -> &'static dyn Dialect {
    match engine {
        Engine::DuckDb => &DuckDb,
        Engine::Postgres => &Postgres,
    }
}

/// Another dialect without `GROUPING SETS`, as some warehouses of the PostgreSQL
/// family lack it: the buckets are then a `UNION ALL` of one `GROUP BY` per set.
pub struct WithoutGroupingSets(pub &'static dyn Dialect);

impl Dialect for WithoutGroupingSets {
    fn quote_ident(&self, name: &str) -> String {
        self.0.quote_ident(name)
    }
    fn quote_literal(&self, text: &str) -> String {
        self.0.quote_literal(text)
    }
    fn table(&self, name: &str) -> String {
        self.0.table(name)
    }
    fn files(&self, glob: &str, timestamp: Option<&str>) -> Option<String> {
        self.0.files(glob, timestamp)
    }
    fn files_columns(&self, glob: &str) -> Option<String> {
        self.0.files_columns(glob)
    }
    fn float_type(&self) -> &'static str {
        self.0.float_type()
    }
    fn float(&self, value: f64) -> String {
        self.0.float(value)
    }
    fn to_float(&self, expression: &str) -> String {
        self.0.to_float(expression)
    }
    fn text(&self, expression: &str) -> String {
        self.0.text(expression)
    }
    fn null_text(&self) -> String {
        self.0.null_text()
    }
    fn instant(&self, t: Timestamp) -> String {
        self.0.instant(t)
    }
    fn to_instant(&self, expression: &str) -> String {
        self.0.to_instant(expression)
    }
    fn instant_key(&self, instant: &str) -> String {
        self.0.instant_key(instant)
    }
    fn duration(&self, d: SignedDuration) -> String {
        self.0.duration(d)
    }
    fn add_duration(&self, instant: &str, d: SignedDuration) -> String {
        self.0.add_duration(instant, d)
    }
    fn aggregate_where(
        &self,
        function: &str,
        distinct: bool,
        value: &str,
        condition: &str,
    ) -> String {
        self.0.aggregate_where(function, distinct, value, condition)
    }
    fn first_by(&self, value: &str, keys: &[String], largest: bool) -> String {
        self.0.first_by(value, keys, largest)
    }
    fn recomputed_cte(&self) -> &'static str {
        self.0.recomputed_cte()
    }
    fn grouping_sets(&self) -> bool {
        false
    }
}

/// `value` on rows where `condition` holds, NULL elsewhere, which every aggregate
/// skips.
fn case_when(condition: &str, value: &str) -> String {
    format!("CASE WHEN {condition} THEN {value} END")
}

/// Microseconds as a BIGINT; durations are bounded in resolution (`MAX_WINDOW`), so
/// they fit.
fn micros(d: SignedDuration) -> String {
    format!("{}::BIGINT", d.as_micros())
}

/// Embedded DuckDB.
pub struct DuckDb;

impl Dialect for DuckDb {
    fn files(&self, glob: &str, timestamp: Option<&str>) -> Option<String> {
        let lower = glob.to_ascii_lowercase();
        Some(if lower.ends_with(".parquet") {
            format!("read_parquet({})", self.quote_literal(glob))
        } else {
            // Types come from the whole file, not a sample of its first rows: a
            // column whose first 20k values are integers may hold decimals later.
            // The time column is read as an instant, so a UTC offset on any row
            // counts (a zone-less TIMESTAMP column would drop it silently).
            let types = timestamp
                .map(|column| {
                    format!(
                        ", types = {{{}: 'TIMESTAMPTZ'}}",
                        self.quote_literal(column)
                    )
                })
                .unwrap_or_default();
            format!(
                "read_csv({}, header = true, sample_size = -1{types})",
                self.quote_literal(glob)
            )
        })
    }

    /// CSV files are sniffed from a sample here: the names come from the header
    /// either way.
    fn files_columns(&self, glob: &str) -> Option<String> {
        if glob.to_ascii_lowercase().ends_with(".parquet") {
            self.files(glob, None)
        } else {
            Some(format!(
                "read_csv({}, header = true)",
                self.quote_literal(glob)
            ))
        }
    }

    fn float_type(&self) -> &'static str {
        "DOUBLE"
    }

    /// VARCHAR compares bytewise in DuckDB.
    fn text(&self, expression: &str) -> String {
        format!("CAST({expression} AS VARCHAR)")
    }

    fn null_text(&self) -> String {
        "CAST(NULL AS VARCHAR)".into()
    }

    fn instant(&self, t: Timestamp) -> String {
        // DuckDB's TIMESTAMP is zone-less; every time in a plan is UTC.
        format!("TIMESTAMP '{}'", t.strftime("%Y-%m-%d %H:%M:%S%.f"))
    }

    /// Text is read as an instant (`TIMESTAMPTZ`), so a UTC offset in it counts, and
    /// text without one is UTC; the build's DuckDB has no ICU extension, so its
    /// TIMESTAMPTZ arithmetic is in UTC. `typeof` is resolved when the statement is
    /// bound, so a TIMESTAMP column (Parquet, tables) keeps a plain, free cast that
    /// DuckDB can still push into the scan as a filter.
    fn to_instant(&self, expression: &str) -> String {
        format!(
            "CASE WHEN typeof({expression}) = 'VARCHAR' THEN CAST(CAST({expression} AS TIMESTAMPTZ) AS TIMESTAMP) ELSE CAST({expression} AS TIMESTAMP) END"
        )
    }

    /// Microseconds since the epoch: a window is then two integer comparisons with
    /// constants.
    fn instant_key(&self, instant: &str) -> String {
        format!("epoch_us({instant})")
    }

    fn duration(&self, d: SignedDuration) -> String {
        micros(d)
    }

    fn add_duration(&self, instant: &str, d: SignedDuration) -> String {
        format!("{instant} + to_microseconds({})", micros(d))
    }

    /// A `CASE` of the value: one pass over the rows updates every aggregate, where a
    /// `FILTER` clause per aggregate would select the rows once per aggregate.
    fn aggregate_where(
        &self,
        function: &str,
        distinct: bool,
        value: &str,
        condition: &str,
    ) -> String {
        let distinct = if distinct { "DISTINCT " } else { "" };
        format!("{function}({distinct}{})", case_when(condition, value))
    }

    /// `arg_min_null`/`arg_max_null` keep a NULL value instead of skipping its row.
    fn first_by(&self, value: &str, keys: &[String], largest: bool) -> String {
        let function = if largest {
            "arg_max_null"
        } else {
            "arg_min_null"
        };
        format!("{function}({value}, ({}))", keys.join(", "))
    }
}

/// PostgreSQL (and warehouses that speak its dialect). Sessions run with
/// `TimeZone = 'UTC'` (the engine sets it), so instants are `timestamptz` and a
/// zone-less `timestamp` column is read as UTC.
pub struct Postgres;

impl Dialect for Postgres {
    fn files(&self, _glob: &str, _timestamp: Option<&str>) -> Option<String> {
        None
    }

    /// Sums of squares and products are `double precision` as on DuckDB: 53 bits of
    /// mantissa, where `numeric` would be exact but many times slower. The sums are
    /// taken around each variable's mean (`moments`), which keeps the rounding error
    /// of variances far below the tolerance of the figures reported.
    fn float_type(&self) -> &'static str {
        "DOUBLE PRECISION"
    }

    /// The "C" collation compares bytes, as DuckDB does, whatever the database's
    /// default collation.
    fn text(&self, expression: &str) -> String {
        format!("(CAST({expression} AS TEXT) COLLATE \"C\")")
    }

    fn null_text(&self) -> String {
        "CAST(NULL AS TEXT)".into()
    }

    fn instant(&self, t: Timestamp) -> String {
        format!("TIMESTAMPTZ '{}+00'", t.strftime("%Y-%m-%d %H:%M:%S%.f"))
    }

    /// Free for a `timestamptz` column; a `timestamp` column and text without an
    /// offset are read in the session's zone, UTC.
    fn to_instant(&self, expression: &str) -> String {
        format!("CAST({expression} AS TIMESTAMPTZ)")
    }

    /// The instant itself: the difference of two `timestamptz` is an exact
    /// `interval` (days and microseconds), compared with interval constants.
    fn instant_key(&self, instant: &str) -> String {
        instant.to_string()
    }

    /// Days and a time of day: an interval's fields are 32-bit, so a count of
    /// microseconds would overflow past about 35 minutes.
    fn duration(&self, d: SignedDuration) -> String {
        let total = d.as_micros().unsigned_abs();
        let day = 86_400_000_000u128;
        let (days, rest) = (total / day, total % day);
        let (seconds, micros) = (rest / 1_000_000, rest % 1_000_000);
        let literal = format!(
            "INTERVAL '{days} days {:02}:{:02}:{:02}.{micros:06}'",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        );
        if d.is_negative() {
            format!("(-{literal})")
        } else {
            literal
        }
    }

    fn add_duration(&self, instant: &str, d: SignedDuration) -> String {
        format!("{instant} + {}", self.duration(d))
    }

    fn aggregate_where(
        &self,
        function: &str,
        distinct: bool,
        value: &str,
        condition: &str,
    ) -> String {
        let distinct = if distinct { "DISTINCT " } else { "" };
        format!("{function}({distinct}{value}) FILTER (WHERE {condition})")
    }

    /// A CTE read more than once is stored, and the planner knows nothing of a
    /// stored CTE's columns: it would take the entities' hash table for a poor one
    /// and hash the 20 times larger facts instead, one batch after another on disk.
    /// Inlined, the join sees the entities as the `GROUP BY` of the exposure table
    /// (one row per entity), hashes them, streams the facts through in parallel
    /// workers, and pays a second aggregation of the exposures, far the smaller table.
    fn recomputed_cte(&self) -> &'static str {
        "NOT MATERIALIZED "
    }

    /// PostgreSQL has no `arg_min`: the first element of the group's values in
    /// order. Ascending order puts NULL keys last by default; descending needs it said.
    fn first_by(&self, value: &str, keys: &[String], largest: bool) -> String {
        let order: Vec<String> = keys
            .iter()
            .map(|key| {
                if largest {
                    format!("{key} DESC NULLS LAST")
                } else {
                    format!("{key} ASC NULLS LAST")
                }
            })
            .collect();
        format!("(array_agg({value} ORDER BY {}))[1]", order.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_durations_are_exact_days_and_times() {
        let d = SignedDuration::from_micros(14 * 86_400_000_000 + 3_723_000_004);
        assert_eq!(Postgres.duration(d), "INTERVAL '14 days 01:02:03.000004'");
        assert_eq!(
            Postgres.duration(-SignedDuration::from_hours(24 * 36_500)),
            "(-INTERVAL '36500 days 00:00:00.000000')"
        );
        assert_eq!(
            DuckDb.duration(SignedDuration::from_secs(2)),
            "2000000::BIGINT"
        );
    }

    #[test]
    fn instants_are_utc_on_both_engines() {
        let t: Timestamp = "2026-10-15T01:02:03.5Z".parse().unwrap();
        assert_eq!(DuckDb.instant(t), "TIMESTAMP '2026-10-15 01:02:03.5'");
        assert_eq!(
            Postgres.instant(t),
            "TIMESTAMPTZ '2026-10-15 01:02:03.5+00'"
        );
    }
}
