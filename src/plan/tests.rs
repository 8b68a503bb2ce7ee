//! Unit tests of resolution and SQL generation.

use serde::de::DeserializeOwned;

use super::*;
use crate::api::{ExposureTable, FactTable, Metric, MetricCalculation};

fn parse<T: DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).unwrap()
}

const EXPOSURES: &str = r#"
apiVersion: tally.dev/v1alpha1
kind: ExposureTable
metadata: {name: exposures, namespace: ns}
spec:
  source: {files: /data/exposures.csv}
  entityColumn: user_id
  timestampColumn: ts
  variantColumn: variant
  dimensions: [{name: platform}]
"#;

const PURCHASES: &str = r#"
apiVersion: tally.dev/v1alpha1
kind: FactTable
metadata: {name: purchases, namespace: ns}
spec:
  source: {table: analytics.purchases}
  entityColumn: user_id
  timestampColumn: ts
  measurements: [{name: revenue, column: amount}, {name: items}]
"#;

const REVENUE: &str = r#"
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {name: revenue, namespace: ns}
spec:
  type: Average
  average:
    measurement: {factTable: purchases, measurement: revenue, aggregation: Sum}
"#;

const CALCULATION: &str = r#"
apiVersion: tally.dev/v1alpha1
kind: MetricCalculation
metadata: {name: calc, namespace: ns}
spec:
  metric: revenue
  exposureTable: exposures
  startTime: "2026-10-15T00:00:00Z"
  endTime: "2026-11-05T00:00:00Z"
"#;

fn catalog(exposures: &str, facts: &str, metric: &str) -> Catalog {
    let mut catalog = Catalog::default();
    catalog.local_data_directories.push("/data".into());
    catalog.add_exposure_table(parse::<ExposureTable>(exposures));
    catalog.add_fact_table(parse::<FactTable>(facts));
    catalog.add_metric(parse::<Metric>(metric));
    catalog
}

fn calculation() -> MetricCalculation {
    parse(CALCULATION)
}

fn invalid_field(error: PlanError) -> (String, String, String) {
    match error {
        PlanError::InvalidField {
            resource,
            field,
            message,
        } => (resource, field, message),
        other => panic!("expected InvalidField, got {other}"),
    }
}

#[test]
fn resolves_and_compiles_one_statement() {
    let resolved = resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, REVENUE)).unwrap();
    assert_eq!(resolved.calculation, "ns/calc");
    assert_eq!(resolved.control, "control");
    let plan = compile(&resolved);
    assert!(!plan.sql.contains(';'), "one statement");
    assert!(plan.sql.contains("FROM \"analytics\".\"purchases\""));
    assert!(plan.sql.contains("read_csv('/data/exposures.csv'"));
    assert!(plan.sql.contains("CAST(\"amount\" AS DOUBLE)"));
    assert!(plan.sql.contains("GROUPING SETS ((variant))"));
    assert_eq!(plan.times.fact_start, plan.times.exposure_start);
    assert!(!plan.layout.cuped && !plan.layout.ratio);
}

#[test]
fn a_column_that_is_not_an_identifier_is_rejected_naming_resource_and_field() {
    let facts = PURCHASES.replace("column: amount", "column: \"amount; DROP TABLE x\"");
    let error = resolve(&calculation(), &catalog(EXPOSURES, &facts, REVENUE)).unwrap_err();
    let (resource, field, message) = invalid_field(error.clone());
    assert_eq!(resource, "FactTable/purchases");
    assert_eq!(field, "spec.measurements[0].column");
    assert!(message.contains("amount; DROP TABLE x"), "{message}");
    assert_eq!(error.reason(), "InvalidSpec");

    let exposures = EXPOSURES.replace("variantColumn: variant", "variantColumn: \"v\\\" OR 1=1\"");
    let (resource, field, _) = invalid_field(
        resolve(&calculation(), &catalog(&exposures, PURCHASES, REVENUE)).unwrap_err(),
    );
    assert_eq!(
        (resource.as_str(), field.as_str()),
        ("ExposureTable/exposures", "spec.variantColumn")
    );

    let facts = PURCHASES.replace(
        "table: analytics.purchases",
        "table: \"purchases; DELETE FROM t\"",
    );
    let (resource, field, _) =
        invalid_field(resolve(&calculation(), &catalog(EXPOSURES, &facts, REVENUE)).unwrap_err());
    assert_eq!(
        (resource.as_str(), field.as_str()),
        ("FactTable/purchases", "spec.source.table")
    );
}

#[test]
fn sql_fragments_cannot_escape_their_parentheses() {
    let metric = REVENUE.replace(
        "aggregation: Sum}",
        "aggregation: Sum, filter: \"1=1) UNION SELECT * FROM secrets WHERE (1=1\"}",
    );
    let (resource, field, _) = invalid_field(
        resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, &metric)).unwrap_err(),
    );
    assert_eq!(
        (resource.as_str(), field.as_str()),
        ("Metric/revenue", "spec.average.measurement.filter")
    );

    let exposures = EXPOSURES.replace(
        "files: /data/exposures.csv",
        "sql: \"SELECT * FROM t; DROP TABLE t\"",
    );
    let (_, field, _) = invalid_field(
        resolve(&calculation(), &catalog(&exposures, PURCHASES, REVENUE)).unwrap_err(),
    );
    assert_eq!(field, "spec.source.sql");

    // Dollar-quoted strings, which DuckDB reads as text where a naive scan sees code.
    let metric = REVENUE.replace(
        "aggregation: Sum}",
        "aggregation: Sum, filter: \"'(' = $$($$) OR (amount < 0 OR '' = $$)$$\"}",
    );
    let (resource, field, message) = invalid_field(
        resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, &metric)).unwrap_err(),
    );
    assert_eq!(
        (resource.as_str(), field.as_str()),
        ("Metric/revenue", "spec.average.measurement.filter")
    );
    assert!(message.contains("dollar-quoted"), "{message}");
    let exposures = EXPOSURES.replace(
        "files: /data/exposures.csv",
        "sql: \"SELECT 1 AS user_id, current_date AS ts, 3 AS variant, $$'$$ AS q)) SELECT 1; COPY (SELECT 42 AS pwned) TO '/tmp/pwned.csv'; WITH exposure_rows AS (SELECT * FROM (SELECT $$'$$ AS q\"",
    );
    let (resource, field, _) = invalid_field(
        resolve(&calculation(), &catalog(&exposures, PURCHASES, REVENUE)).unwrap_err(),
    );
    assert_eq!(
        (resource.as_str(), field.as_str()),
        ("ExposureTable/exposures", "spec.source.sql")
    );
    // Escape strings, where a backslash escapes a quote.
    let metric = REVENUE.replace(
        "aggregation: Sum}",
        "aggregation: Sum, filter: \"name = E'\\\\'' ) OR (1 = 1 OR '\"}",
    );
    let (_, field, message) = invalid_field(
        resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, &metric)).unwrap_err(),
    );
    assert_eq!(field, "spec.average.measurement.filter");
    assert!(message.contains("backslash"), "{message}");

    let metric = REVENUE.replace(
        "aggregation: Sum}",
        "aggregation: Sum, filter: \"items >= 3\"}",
    );
    let plan = compile(&resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, &metric)).unwrap());
    assert!(plan.sql.contains("WHERE (items >= 3) AND"));
}

#[test]
fn string_literals_are_escaped() {
    let mut calc = calculation();
    calc.spec.calculation.exposure_groups = vec!["control".into(), "it's".into()];
    let plan = compile(&resolve(&calc, &catalog(EXPOSURES, PURCHASES, REVENUE)).unwrap());
    assert!(plan.sql.contains("min(variant) IN ('control', 'it''s')"));
    let exposures = EXPOSURES.replace("/data/exposures.csv", "/data/o'brien.csv");
    let plan = compile(&resolve(&calculation(), &catalog(&exposures, PURCHASES, REVENUE)).unwrap());
    assert!(plan.sql.contains("read_csv('/data/o''brien.csv'"));
}

#[test]
fn a_metric_has_only_the_block_of_its_type() {
    let both = format!(
        "{REVENUE}  ratio:\n    numerator: {{factTable: purchases, measurement: amount, aggregation: Sum}}\n    denominator: {{factTable: purchases, aggregation: Count}}\n"
    );
    let error = resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, &both)).unwrap_err();
    let (_, field, message) = invalid_field(error);
    assert_eq!(field, "spec.ratio");
    assert_eq!(message, "must not be set for type Average");
}

#[test]
fn exposure_groups_must_contain_the_control() {
    let catalog = catalog(EXPOSURES, PURCHASES, REVENUE);
    let mut calc = calculation();
    calc.spec.calculation.exposure_groups = vec!["treatment-a".into(), "treatment-b".into()];
    let (resource, field, message) = invalid_field(resolve(&calc, &catalog).unwrap_err());
    assert_eq!(resource, "MetricCalculation/calc");
    assert_eq!(field, "spec.exposureGroups");
    assert!(message.contains("\"control\""), "{message}");
    // A control among the groups, named by spec.analysis.control, is fine.
    calc.spec.calculation.analysis = Some(crate::api::AnalysisSettings {
        control: Some("treatment-a".into()),
    });
    assert!(resolve(&calc, &catalog).is_ok());
}

#[test]
fn missing_references_name_what_is_missing() {
    let catalog = catalog(EXPOSURES, PURCHASES, REVENUE);
    let mut calc = calculation();
    calc.spec.calculation.metric = "nope".into();
    let error = resolve(&calc, &catalog).unwrap_err();
    assert_eq!(error.reason(), "MissingReference");
    assert_eq!(
        error.to_string(),
        "MetricCalculation/calc: spec.metric refers to Metric \"nope\", which does not exist in this namespace; create it or fix the name"
    );
    let metric = REVENUE.replace("factTable: purchases", "factTable: orders");
    let error = resolve(
        &calculation(),
        &super::tests::catalog(EXPOSURES, PURCHASES, &metric),
    )
    .unwrap_err();
    assert!(
        matches!(&error, PlanError::MissingReference { referrer, field, kind: "FactTable", name }
        if referrer == "Metric/revenue" && field == "spec.average.measurement.factTable" && name == "orders")
    );
    let mut calc = calculation();
    calc.spec.calculation.warehouse = Some("dwh".into());
    assert!(matches!(
        resolve(&calc, &catalog).unwrap_err(),
        PlanError::MissingReference {
            kind: "Warehouse",
            ..
        }
    ));
}

#[test]
fn undeclared_measurements_and_dimensions_are_errors() {
    let metric = REVENUE.replace("measurement: revenue", "measurement: profit");
    let (_, field, message) = invalid_field(
        resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, &metric)).unwrap_err(),
    );
    assert_eq!(field, "spec.average.measurement.measurement");
    assert!(message.contains("declared: revenue, items"), "{message}");

    let mut calc = calculation();
    calc.spec.calculation.split_dimensions = vec![crate::api::SplitDimension {
        name: "country".into(),
        dimension_table: None,
    }];
    let (_, field, _) =
        invalid_field(resolve(&calc, &catalog(EXPOSURES, PURCHASES, REVENUE)).unwrap_err());
    assert_eq!(field, "spec.splitDimensions[0].name");
}

#[test]
fn times_are_checked_and_cuped_moves_the_fact_start() {
    let mut calc = calculation();
    calc.spec.end_time = calc.spec.start_time.clone();
    let (_, field, _) =
        invalid_field(resolve(&calc, &catalog(EXPOSURES, PURCHASES, REVENUE)).unwrap_err());
    assert_eq!(field, "spec.endTime");

    let metric = format!(
        "{REVENUE}  varianceReduction: {{preExposureWindow: 14d}}\n  window: {{offset: 1h, length: 7d}}\n"
    );
    let plan = compile(&resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, &metric)).unwrap());
    assert_eq!(plan.times.fact_start.to_string(), "2026-10-01T00:00:00Z");
    assert!(plan.layout.cuped);
    // The closed window keeps only complete entities, and pre/post windows share one join.
    assert!(plan.sql.contains(
        "min(ts) + to_microseconds(608400000000::BIGINT) <= TIMESTAMP '2026-11-05 00:00:00'"
    ));
    assert_eq!(
        plan.sql
            .matches("JOIN exposed AS e ON f.entity = e.entity\n")
            .count(),
        1
    );
}

#[test]
fn numerator_and_denominator_on_one_table_share_a_scan() {
    let metric = r#"
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {name: revenue, namespace: ns}
spec:
  type: Ratio
  ratio:
    numerator: {factTable: purchases, measurement: revenue, aggregation: Sum}
    denominator: {factTable: purchases, aggregation: Count}
"#;
    let resolved = resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, metric)).unwrap();
    assert_eq!(resolved.fact_reads.len(), 1);
    assert_eq!(
        resolved.tables,
        [
            TableRead::Exposure("exposures".into()),
            TableRead::Fact("purchases".into())
        ],
        "each table read once"
    );
    let plan = compile(&resolved);
    assert!(plan.layout.ratio);
    assert_eq!(
        plan.sql.matches("FROM \"analytics\".\"purchases\"").count(),
        1
    );
}

#[test]
fn durations_beyond_any_timestamp_range_are_refused_by_field() {
    for (window, field) in [
        ("{offset: 9223372036854775807s}", "spec.window.offset"),
        ("{length: 10000000000000s}", "spec.window.length"),
        ("{offset: 36500d, length: 36501d}", "spec.window.length"),
    ] {
        let metric = format!("{REVENUE}  window: {window}\n");
        let (resource, actual, message) = invalid_field(
            resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, &metric)).unwrap_err(),
        );
        assert_eq!(
            (resource.as_str(), actual.as_str()),
            ("Metric/revenue", field)
        );
        assert!(message.contains("out of range"), "{message}");
    }
    let metric = format!("{REVENUE}  varianceReduction: {{preExposureWindow: 9999999999999s}}\n");
    let (_, field, _) = invalid_field(
        resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, &metric)).unwrap_err(),
    );
    assert_eq!(field, "spec.varianceReduction.preExposureWindow");

    // The longest accepted windows still compile to BIGINT microseconds.
    let metric = format!("{REVENUE}  window: {{offset: 36500d, length: 36500d}}\n");
    let plan = compile(&resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, &metric)).unwrap());
    assert!(
        plan.sql.contains("since < 6307200000000000::BIGINT"),
        "{}",
        plan.sql
    );
}

#[test]
fn caps_and_thresholds_must_be_finite() {
    for (extra, field) in [
        ("cap: {max: .nan}", "spec.average.measurement.cap.max"),
        ("cap: {min: -.inf}", "spec.average.measurement.cap.min"),
        (
            "threshold: {operator: GreaterThan, value: .inf}",
            "spec.average.measurement.threshold.value",
        ),
    ] {
        let metric = REVENUE.replace("aggregation: Sum}", &format!("aggregation: Sum, {extra}}}"));
        let error = resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, &metric)).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("Metric/revenue: {field}: must be a finite number")
        );
    }
}

#[test]
fn a_table_reads_files_only_under_the_warehouses_data_directories() {
    let warehouse = |directories: &str| -> crate::api::Warehouse {
        parse(&format!(
            "apiVersion: tally.dev/v1alpha1\nkind: Warehouse\nmetadata: {{name: wh, namespace: ns}}\n\
             spec: {{engine: duckdb, duckdb: {{dataDirectories: {directories}}}}}\n"
        ))
    };
    let on_warehouse = |exposures: &str, directories: &str| {
        let mut catalog = Catalog::default();
        catalog.add_warehouse(warehouse(directories));
        catalog.add_exposure_table(parse::<ExposureTable>(
            &exposures.replace("spec:\n", "spec:\n  warehouse: wh\n"),
        ));
        catalog.add_fact_table(parse::<FactTable>(
            &PURCHASES.replace("spec:\n", "spec:\n  warehouse: wh\n"),
        ));
        catalog.add_metric(parse::<Metric>(REVENUE));
        resolve(&calculation(), &catalog)
    };
    assert!(on_warehouse(EXPOSURES, "[/data]").is_ok());
    // The worker's token, its environment, or a sibling of the data directory.
    for files in [
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/proc/self/environ",
        "/data/../etc/passwd",
        "/database/x.csv",
    ] {
        let exposures = EXPOSURES.replace("/data/exposures.csv", files);
        let (resource, field, message) =
            invalid_field(on_warehouse(&exposures, "[/data]").unwrap_err());
        assert_eq!(
            (resource.as_str(), field.as_str()),
            ("ExposureTable/exposures", "spec.source.files"),
            "{files}"
        );
        assert!(message.contains("dataDirectories"), "{message}");
    }
    // Nor can a Warehouse open the token's directory, or everything.
    for directories in [
        "[/var/run/secrets]",
        "[/]",
        "[/data, /proc]",
        "[relative/dir]",
    ] {
        let (resource, field, _) = invalid_field(on_warehouse(EXPOSURES, directories).unwrap_err());
        assert_eq!(resource, "Warehouse/wh", "{directories}");
        assert!(field.starts_with("spec.duckdb.dataDirectories["), "{field}");
    }
}

const POSTGRES: &str = r#"
apiVersion: tally.dev/v1alpha1
kind: Warehouse
metadata: {name: pg, namespace: ns}
spec:
  engine: postgres
  postgres: {host: db, database: analytics, user: tally, schema: experiments}
"#;

fn on_postgres(exposures: &str) -> Result<ResolvedCalculation, PlanError> {
    let mut catalog = catalog(exposures, PURCHASES, REVENUE);
    catalog.add_warehouse(parse(POSTGRES));
    let mut calculation = calculation();
    calculation.spec.calculation.warehouse = Some("pg".into());
    calculation.spec.calculation.split_dimensions = vec![parse("{name: platform}")];
    resolve(&calculation, &catalog)
}

#[test]
fn a_postgres_warehouse_reads_tables_and_sql_not_files() {
    let (resource, field, message) = invalid_field(on_postgres(EXPOSURES).unwrap_err());
    assert_eq!(
        (resource.as_str(), field.as_str()),
        ("ExposureTable/exposures", "spec.source.files")
    );
    assert!(
        message.contains("Warehouse/pg reads tables and SQL"),
        "{message}"
    );
    let exposures = EXPOSURES.replace("{files: /data/exposures.csv}", "{table: exposures}");
    let resolved = on_postgres(&exposures).unwrap();
    assert_eq!(resolved.engine.warehouse.as_deref(), Some("Warehouse/pg"));
    let plan = compile(&resolved);
    // timestamptz in UTC, intervals, FILTER, double precision, bytewise text.
    for expected in [
        "TIMESTAMPTZ '2026-10-15 00:00:00+00'",
        "CAST(\"ts\" AS TIMESTAMPTZ)",
        "since >= INTERVAL '0 days 00:00:00.000000'",
        "FILTER (WHERE",
        "CAST(\"amount\" AS DOUBLE PRECISION)",
        "COLLATE \"C\"",
        "FROM \"exposures\" AS exposure_source",
        "GROUPING SETS ((variant), (variant, dim_0))",
        "(array_agg(dim_0 ORDER BY ts ASC NULLS LAST, dim_0 ASC NULLS LAST))[1]",
    ] {
        assert!(plan.sql.contains(expected), "{expected}:\n{}", plan.sql);
    }
    for duckdb_only in [
        "epoch_us",
        "arg_min_null",
        "typeof",
        "to_microseconds",
        "read_csv",
    ] {
        assert!(
            !plan.sql.contains(duckdb_only),
            "{duckdb_only}:\n{}",
            plan.sql
        );
    }
    assert!(
        plan.sources
            .iter()
            .all(|s| s.sql.starts_with("SELECT * FROM"))
    );
    // A postgres Warehouse needs its settings.
    let mut catalog = catalog(&exposures, PURCHASES, REVENUE);
    catalog.add_warehouse(parse(
        "apiVersion: tally.dev/v1alpha1\nkind: Warehouse\nmetadata: {name: pg, namespace: ns}\nspec: {engine: postgres}\n",
    ));
    let mut calculation = calculation();
    calculation.spec.calculation.warehouse = Some("pg".into());
    let (resource, field, _) = invalid_field(resolve(&calculation, &catalog).unwrap_err());
    assert_eq!(
        (resource.as_str(), field.as_str()),
        ("Warehouse/pg", "spec.postgres")
    );
}

/// The wrapper changes its dialect's buckets and nothing else: each method it does
/// not override is its dialect's own, defaults included.
#[test]
fn without_grouping_sets_changes_only_the_buckets() {
    let mut calculation = calculation();
    calculation.spec.calculation.split_dimensions = vec![parse("{name: platform}")];
    let resolved = resolve(&calculation, &catalog(EXPOSURES, PURCHASES, REVENUE)).unwrap();
    let outside_buckets = |statement: &str| {
        let start = statement.find("buckets AS (").unwrap();
        let end = statement.find("multiple_variants AS (").unwrap();
        format!("{}{}", &statement[..start], &statement[end..])
    };
    for inner in [&dialect::DuckDb as &'static dyn Dialect, &dialect::Postgres] {
        let with = sql::statement(&resolved, inner);
        let without = sql::statement(&resolved, &dialect::WithoutGroupingSets(inner));
        assert!(with.contains("GROUPING SETS") && !without.contains("GROUPING SETS"));
        assert_eq!(outside_buckets(&with), outside_buckets(&without));
    }
}

#[test]
fn buckets_without_grouping_sets_equal_those_with() {
    let dir = std::env::temp_dir().join(format!("tally-union-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("exposures.csv"),
        "user_id,ts,variant,platform\n1,2026-10-15T01:00:00Z,control,ios\n2,2026-10-15T02:00:00Z,treatment,web\n\
         3,2026-10-16T02:00:00Z,treatment,ios\n4,2026-10-16T03:00:00Z,control,web\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("purchases.csv"),
        "user_id,ts,amount,items\n1,2026-10-15T05:00:00Z,10.5,1\n2,2026-10-16T05:00:00Z,3,2\n\
         3,2026-10-17T05:00:00Z,7.25,1\n3,2026-10-18T05:00:00Z,1,1\n",
    )
    .unwrap();
    let data = dir.display().to_string();
    let mut catalog = catalog(
        &EXPOSURES.replace("/data/exposures.csv", &format!("{data}/exposures.csv")),
        &PURCHASES.replace(
            "{table: analytics.purchases}",
            &format!("{{files: {data}/purchases.csv}}"),
        ),
        REVENUE,
    );
    catalog.local_data_directories.push(data.clone());
    let mut calculation = calculation();
    calculation.spec.calculation.split_dimensions = vec![parse("{name: platform}")];
    let resolved = resolve(&calculation, &catalog).unwrap();
    let plan = compile(&resolved);
    let union = sql::statement(&resolved, &dialect::WithoutGroupingSets(&dialect::DuckDb));
    assert!(union.contains("UNION ALL") && !union.contains("GROUPING SETS"));
    let run = |sql: &str| {
        crate::engine::duckdb::run(&plan.engine.duckdb, sql, &Default::default()).unwrap()
    };
    let (with, without) = (run(&plan.sql), run(&union));
    let buckets = |result: &crate::engine::QueryResult| {
        read_buckets(&plan.layout, &result.columns, &result.rows).unwrap()
    };
    assert_eq!(buckets(&with), buckets(&without));
    assert_eq!(
        buckets(&with).0.len(),
        6,
        "overall and per platform, per variant"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_plan_carries_each_sql_source_once() {
    // A long SQL source, read by the exposures and by the facts.
    let long = format!(
        "SELECT * FROM events WHERE note <> '{}'",
        "x".repeat(60_000)
    );
    let exposures = EXPOSURES.replace("files: /data/exposures.csv", &format!("sql: \"{long}\""));
    let purchases = PURCHASES.replace("table: analytics.purchases", &format!("sql: \"{long}\""));
    let plan =
        compile(&resolve(&calculation(), &catalog(&exposures, &purchases, REVENUE)).unwrap());
    assert_eq!(plan.sql_sources, std::slice::from_ref(&long));
    assert_eq!(
        plan.sql.matches(&long).count(),
        1,
        "the statement reads it from a CTE"
    );
    let checks: Vec<_> = plan.sources.iter().map(|c| c.sql_source).collect();
    assert_eq!(checks, [Some(0), Some(0)]);

    let json = serde_json::to_string(&plan).unwrap();
    assert_eq!(
        json.matches(&long).count(),
        1,
        "the plan's JSON carries it once"
    );
    assert!(json.len() < long.len() + 20_000, "{} bytes", json.len());
    let back: CalculationPlan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plan);

    // A plan without SQL sources travels as it is.
    let plan = compile(&resolve(&calculation(), &catalog(EXPOSURES, PURCHASES, REVENUE)).unwrap());
    assert!(plan.sql_sources.is_empty());
    let back: CalculationPlan =
        serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
    assert_eq!(back, plan);
}
