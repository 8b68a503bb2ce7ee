use jiff::SignedDuration;
use kube::ResourceExt;

use crate::api::{
    self, Aggregation, DimensionTable, Engine, ExposureTable, FactTable, Metric, MetricCalculation,
    MetricMeasurement, MetricType, SplitDimension, TableSource, ThresholdOperator, Warehouse,
};

use super::{Catalog, EngineSettings, PlanError, PlanTimes, data_access, fragment::check_fragment};

/// A calculation with every reference followed and every name checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedCalculation {
    pub calculation: String,
    pub engine: EngineSettings,
    pub exposure: ExposureRead,
    /// Distinct fact reads; measures on the same table and filter share one.
    pub fact_reads: Vec<FactRead>,
    /// `[value]` for an average, `[numerator, denominator]` for a ratio.
    pub measures: Vec<Measure>,
    pub window_offset: SignedDuration,
    /// Where a closed window ends (its offset plus its length); `None` when open.
    pub window_end: Option<SignedDuration>,
    pub pre_exposure_window: Option<SignedDuration>,
    pub dimensions: Vec<Dimension>,
    pub exposure_groups: Vec<String>,
    pub control: String,
    pub times: PlanTimes,
    /// Every table the calculation reads, once each (data readiness is checked on them).
    pub tables: Vec<TableRead>,
    /// Each table's source and the columns the calculation reads from it.
    pub source_columns: Vec<SourceColumns>,
}

/// A table's source and the columns read from it, as (field, column).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceColumns {
    pub resource: String,
    pub source: Source,
    pub columns: Vec<(String, String)>,
}

/// Records that `resource` reads `column` (named by `field`) from `source`.
fn note(
    reads: &mut Vec<SourceColumns>,
    resource: &str,
    source: &Source,
    field: &str,
    column: &str,
) {
    let index = match reads.iter().position(|r| r.resource == resource) {
        Some(i) => i,
        None => {
            reads.push(SourceColumns {
                resource: resource.to_string(),
                source: source.clone(),
                columns: Vec::new(),
            });
            reads.len() - 1
        }
    };
    let columns = &mut reads[index].columns;
    if !columns.iter().any(|(_, c)| c == column) {
        columns.push((field.to_string(), column.to_string()));
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TableRead {
    Exposure(String),
    Fact(String),
    Dimension(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Table(String),
    Sql(String),
    Files(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExposureRead {
    pub source: Source,
    pub entity: String,
    pub timestamp: String,
    pub variant: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FactRead {
    pub source: Source,
    pub entity: String,
    pub timestamp: String,
    pub filter: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    /// Index into `fact_reads`.
    pub read: usize,
    /// The measurement column; `None` counts rows.
    pub column: Option<String>,
    pub aggregation: Aggregation,
    pub cap_min: Option<f64>,
    pub cap_max: Option<f64>,
    pub threshold: Option<(ThresholdOperator, f64)>,
    pub replace_missing_with_zero: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Dimension {
    pub name: String,
    pub from: DimensionFrom,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DimensionFrom {
    /// The value on the entity's first exposure row.
    Exposure { column: String },
    /// The entity's row (the one in force at first exposure, when time-varying).
    Table {
        source: Source,
        entity: String,
        column: String,
        timestamp: Option<String>,
    },
}

/// The longest duration a window may have: far beyond any experiment, and short
/// enough that a time plus windows stays inside every engine's timestamp range.
pub const MAX_WINDOW: SignedDuration = SignedDuration::from_hours(36_500 * 24);

fn bounded(
    resource: &str,
    field: &str,
    duration: SignedDuration,
) -> Result<SignedDuration, PlanError> {
    if duration.is_negative() || duration > MAX_WINDOW {
        return Err(PlanError::invalid(
            resource,
            field,
            format!(
                "{}s is out of range (at most 36500d, about 100 years)",
                duration.as_secs()
            ),
        ));
    }
    Ok(duration)
}

fn column(resource: &str, field: String, value: &str) -> Result<String, PlanError> {
    api::validate_column(value).map_err(|e| PlanError::invalid(resource, field, e))?;
    Ok(value.to_string())
}

fn source(
    resource: &str,
    spec: &TableSource,
    engine: &EngineSettings,
) -> Result<Source, PlanError> {
    let set = [
        spec.table.is_some(),
        spec.sql.is_some(),
        spec.files.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        return Err(PlanError::invalid(
            resource,
            "spec.source",
            "set exactly one of table, sql or files",
        ));
    }
    if let Some(table) = &spec.table {
        api::validate_table_name(table)
            .map_err(|e| PlanError::invalid(resource, "spec.source.table", e))?;
        return Ok(Source::Table(table.clone()));
    }
    if let Some(sql) = &spec.sql {
        check_fragment(sql).map_err(|e| PlanError::invalid(resource, "spec.source.sql", e))?;
        return Ok(Source::Sql(sql.clone()));
    }
    let files = spec.files.clone().unwrap_or_default();
    if files.trim().is_empty() {
        return Err(PlanError::invalid(
            resource,
            "spec.source.files",
            "is empty",
        ));
    }
    match engine.engine {
        Engine::DuckDb => {
            let directories = &engine.duckdb.data_directories;
            if !data_access::within(&files, directories) {
                return Err(PlanError::invalid(
                    resource,
                    "spec.source.files",
                    format!(
                        "{files:?} is not under a data directory of the Warehouse ({}): \
                         declare its directory in the Warehouse's spec.duckdb.dataDirectories",
                        if directories.is_empty() {
                            "none declared".to_string()
                        } else {
                            directories.join(", ")
                        }
                    ),
                ));
            }
            Ok(Source::Files(files))
        }
        Engine::Postgres => Err(PlanError::invalid(
            resource,
            "spec.source.files",
            format!(
                "{} reads tables and SQL, not files: name a table (spec.source.table) or a query (spec.source.sql)",
                engine
                    .warehouse
                    .as_deref()
                    .unwrap_or("a postgres Warehouse")
            ),
        )),
    }
}

/// The engine of a Warehouse, its settings checked.
fn warehouse_engine(name: &str, warehouse: &api::Warehouse) -> Result<EngineSettings, PlanError> {
    let resource = format!("Warehouse/{name}");
    let duckdb = warehouse.spec.duckdb.clone().unwrap_or_default();
    for (index, directory) in duckdb.data_directories.iter().enumerate() {
        data_access::check_data_directory(directory).map_err(|message| {
            PlanError::invalid(
                &resource,
                format!("spec.duckdb.dataDirectories[{index}]"),
                message,
            )
        })?;
    }
    let postgres = match warehouse.spec.engine {
        Engine::DuckDb => None,
        Engine::Postgres => {
            let settings = warehouse.spec.postgres.clone().ok_or_else(|| {
                PlanError::invalid(&resource, "spec.postgres", "required for engine postgres")
            })?;
            for (field, value) in [
                ("spec.postgres.host", &settings.host),
                ("spec.postgres.database", &settings.database),
                ("spec.postgres.user", &settings.user),
            ] {
                if value.trim().is_empty() {
                    return Err(PlanError::invalid(&resource, field, "is empty"));
                }
            }
            if let Some(ca) = &settings.ca_certificate
                && ca.secret_key_ref.is_some() == ca.config_map_key_ref.is_some()
            {
                return Err(PlanError::invalid(
                    &resource,
                    "spec.postgres.caCertificate",
                    "set exactly one of secretKeyRef or configMapKeyRef",
                ));
            }
            Some(settings)
        }
    };
    Ok(EngineSettings {
        engine: warehouse.spec.engine,
        duckdb,
        postgres,
        warehouse: Some(resource),
    })
}

fn missing(referrer: &str, field: &str, kind: &'static str, name: &str) -> PlanError {
    PlanError::MissingReference {
        referrer: referrer.to_string(),
        field: field.to_string(),
        kind,
        name: name.to_string(),
    }
}

/// Follows the references of `calculation` within `catalog` and checks them, in
/// three steps: [`dereference`] finds every resource it names, [`validate`] checks
/// what they say about the calculation as a whole (engine, windows, times, groups),
/// and [`assemble`] turns them into the reads of the statement, checking each name a
/// resource contributes.
pub fn resolve(
    calculation: &MetricCalculation,
    catalog: &Catalog,
) -> Result<ResolvedCalculation, PlanError> {
    let references = dereference(calculation, catalog)?;
    let settings = validate(&references, catalog)?;
    assemble(&references, settings)
}

/// The resources a calculation names, found.
struct References<'a> {
    calculation: &'a MetricCalculation,
    /// `MetricCalculation/name`: who refers, in messages.
    calculation_name: String,
    metric: &'a Metric,
    metric_name: String,
    exposure_table: &'a ExposureTable,
    exposure_name: String,
    /// The calculation's Warehouse, else the exposure table's; `None`: embedded DuckDB.
    warehouse: Option<(&'a str, &'a Warehouse)>,
    /// `[value]` for an average, `[numerator, denominator]` for a ratio.
    sides: Vec<Side<'a>>,
    splits: Vec<Split<'a>>,
}

struct Side<'a> {
    /// Where the side is in the Metric, e.g. `spec.ratio.numerator`.
    field: &'static str,
    measurement: &'a MetricMeasurement,
    fact: &'a FactTable,
    fact_name: String,
}

struct Split<'a> {
    /// `spec.splitDimensions[i]`.
    field: String,
    split: &'a SplitDimension,
    /// The dimension table it names; `None`: a dimension of the exposure table.
    table: Option<(&'a DimensionTable, String)>,
}

fn dereference<'a>(
    calculation: &'a MetricCalculation,
    catalog: &'a Catalog,
) -> Result<References<'a>, PlanError> {
    let calculation_name = format!("MetricCalculation/{}", calculation.name_any());
    let template = &calculation.spec.calculation;
    let metric = catalog
        .metrics
        .get(&template.metric)
        .ok_or_else(|| missing(&calculation_name, "spec.metric", "Metric", &template.metric))?;
    let metric_name = format!("Metric/{}", metric.name_any());
    let exposure_table = catalog
        .exposure_tables
        .get(&template.exposure_table)
        .ok_or_else(|| {
            missing(
                &calculation_name,
                "spec.exposureTable",
                "ExposureTable",
                &template.exposure_table,
            )
        })?;
    let exposure_name = format!("ExposureTable/{}", exposure_table.name_any());
    let warehouse = match (&template.warehouse, &exposure_table.spec.warehouse) {
        (Some(name), _) => Some((name, calculation_name.as_str())),
        (None, Some(name)) => Some((name, exposure_name.as_str())),
        (None, None) => None,
    }
    .map(|(name, referrer)| {
        catalog
            .warehouses
            .get(name)
            .map(|warehouse| (name.as_str(), &**warehouse))
            .ok_or_else(|| missing(referrer, "spec.warehouse", "Warehouse", name))
    })
    .transpose()?;
    let sides = metric_sides(metric, &metric_name)?
        .into_iter()
        .map(|(field, measurement)| {
            let fact = catalog
                .fact_tables
                .get(&measurement.fact_table)
                .ok_or_else(|| {
                    missing(
                        &metric_name,
                        &format!("{field}.factTable"),
                        "FactTable",
                        &measurement.fact_table,
                    )
                })?;
            Ok(Side {
                field,
                measurement,
                fact,
                fact_name: format!("FactTable/{}", fact.name_any()),
            })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    let splits = template
        .split_dimensions
        .iter()
        .enumerate()
        .map(|(i, split)| {
            let field = format!("spec.splitDimensions[{i}]");
            let table = split
                .dimension_table
                .as_ref()
                .map(|name| {
                    catalog
                        .dimension_tables
                        .get(name)
                        .map(|table| (&**table, format!("DimensionTable/{}", table.name_any())))
                        .ok_or_else(|| {
                            missing(
                                &calculation_name,
                                &format!("{field}.dimensionTable"),
                                "DimensionTable",
                                name,
                            )
                        })
                })
                .transpose()?;
            Ok(Split {
                field,
                split,
                table,
            })
        })
        .collect::<Result<Vec<_>, PlanError>>()?;
    Ok(References {
        calculation,
        calculation_name,
        metric,
        metric_name,
        exposure_table,
        exposure_name,
        warehouse,
        sides,
        splits,
    })
}

/// The measurements of a metric by its type, with the field each is at.
fn metric_sides<'a>(
    metric: &'a Metric,
    metric_name: &str,
) -> Result<Vec<(&'static str, &'a MetricMeasurement)>, PlanError> {
    Ok(match metric.spec.metric_type {
        MetricType::Average => {
            let average = metric.spec.average.as_ref().ok_or_else(|| {
                PlanError::invalid(metric_name, "spec.average", "required for type Average")
            })?;
            // The CRD refuses this too; without it, the ratio would be ignored.
            if metric.spec.ratio.is_some() {
                return Err(PlanError::invalid(
                    metric_name,
                    "spec.ratio",
                    "must not be set for type Average",
                ));
            }
            vec![("spec.average.measurement", &average.measurement)]
        }
        MetricType::Ratio => {
            let ratio = metric.spec.ratio.as_ref().ok_or_else(|| {
                PlanError::invalid(metric_name, "spec.ratio", "required for type Ratio")
            })?;
            if metric.spec.average.is_some() {
                return Err(PlanError::invalid(
                    metric_name,
                    "spec.average",
                    "must not be set for type Ratio",
                ));
            }
            vec![
                ("spec.ratio.numerator", &ratio.numerator),
                ("spec.ratio.denominator", &ratio.denominator),
            ]
        }
    })
}

/// What holds for the calculation as a whole, checked.
struct Settings {
    engine: EngineSettings,
    window_offset: SignedDuration,
    window_end: Option<SignedDuration>,
    pre_exposure_window: Option<SignedDuration>,
    times: PlanTimes,
}

fn validate(r: &References, catalog: &Catalog) -> Result<Settings, PlanError> {
    let mut engine = match r.warehouse {
        Some((name, warehouse)) => warehouse_engine(name, warehouse)?,
        None => EngineSettings::embedded(),
    };
    for directory in &catalog.local_data_directories {
        if !engine.duckdb.data_directories.contains(directory) {
            engine.duckdb.data_directories.push(directory.clone());
        }
    }
    // A calculation reads from one warehouse.
    let warehouse_name = r.warehouse.map(|(name, _)| name);
    let tables = r
        .sides
        .iter()
        .map(|side| (&side.fact_name, &side.fact.spec.warehouse))
        .chain(r.splits.iter().filter_map(|split| {
            split
                .table
                .as_ref()
                .map(|(table, name)| (name, &table.spec.warehouse))
        }));
    for (resource, table_warehouse) in tables {
        if let Some(w) = table_warehouse
            && Some(w.as_str()) != warehouse_name
        {
            return Err(PlanError::invalid(
                resource,
                "spec.warehouse",
                format!(
                    "the table is in Warehouse {w:?} but the calculation runs on {}; a calculation reads from one warehouse",
                    warehouse_name.unwrap_or("the embedded DuckDB")
                ),
            ));
        }
    }
    for side in &r.sides {
        validate_side(side, &r.metric_name)?;
    }

    let metric_name = &r.metric_name;
    let window = r.metric.spec.window.clone().unwrap_or_default();
    let window_offset = window
        .offset
        .as_ref()
        .map(|d| bounded(metric_name, "spec.window.offset", d.as_signed()))
        .transpose()?
        .unwrap_or(SignedDuration::ZERO);
    let window_length = window
        .length
        .as_ref()
        .map(|d| bounded(metric_name, "spec.window.length", d.as_signed()))
        .transpose()?;
    // Both are bounded, so their sum is far from overflowing; checked all the same.
    let window_end = window_length
        .map(|length| {
            window_offset.checked_add(length).ok_or_else(|| {
                PlanError::invalid(metric_name, "spec.window", "offset + length is too large")
            })
        })
        .transpose()?;
    let pre_exposure_window = r
        .metric
        .spec
        .variance_reduction
        .as_ref()
        .map(|v| {
            bounded(
                metric_name,
                "spec.varianceReduction.preExposureWindow",
                v.pre_exposure_window.as_signed(),
            )
        })
        .transpose()?;

    let calculation_name = &r.calculation_name;
    let spec = &r.calculation.spec;
    let start = spec.start_time.0;
    let end = spec.end_time.0;
    if end <= start {
        return Err(PlanError::invalid(
            calculation_name,
            "spec.endTime",
            "must be after spec.startTime",
        ));
    }
    let exposure_end = match &spec.exposure_end_time {
        Some(t) if t.0 <= start || t.0 > end => {
            return Err(PlanError::invalid(
                calculation_name,
                "spec.exposureEndTime",
                "must be after spec.startTime and not after spec.endTime",
            ));
        }
        Some(t) => t.0,
        None => end,
    };
    let fact_start = match pre_exposure_window {
        Some(pre) => start.checked_sub(pre).map_err(|e| {
            PlanError::invalid(metric_name, "spec.varianceReduction.preExposureWindow", e)
        })?,
        None => start,
    };

    let template = &spec.calculation;
    for (i, split) in r.splits.iter().enumerate() {
        if r.splits[..i]
            .iter()
            .any(|s| s.split.name == split.split.name)
        {
            return Err(PlanError::invalid(
                calculation_name,
                format!("{}.name", split.field),
                "is listed twice",
            ));
        }
    }
    if let Some(i) = template.exposure_groups.iter().position(|g| g.is_empty()) {
        return Err(PlanError::invalid(
            calculation_name,
            format!("spec.exposureGroups[{i}]"),
            "is empty",
        ));
    }
    let control = template.control();
    if !template.exposure_groups.is_empty()
        && !template.exposure_groups.iter().any(|g| g == control)
    {
        // Every effect is against the control: without it there is no analysis.
        return Err(PlanError::invalid(
            calculation_name,
            "spec.exposureGroups",
            format!(
                "does not contain the control variant {control:?}; add it, or set \
                 spec.analysis.control to one of the groups"
            ),
        ));
    }
    Ok(Settings {
        engine,
        window_offset,
        window_end,
        pre_exposure_window,
        times: PlanTimes {
            exposure_start: start,
            exposure_end,
            fact_start,
            fact_end: end,
        },
    })
}

/// A metric's measurement: its filter, caps and threshold.
fn validate_side(side: &Side, metric_name: &str) -> Result<(), PlanError> {
    let (field, m) = (side.field, side.measurement);
    if let Some(filter) = &m.filter {
        check_fragment(filter)
            .map_err(|e| PlanError::invalid(metric_name, format!("{field}.filter"), e))?;
    }
    if m.measurement.is_none() && m.aggregation != Aggregation::Count {
        return Err(PlanError::invalid(
            metric_name,
            format!("{field}.measurement"),
            format!(
                "required for aggregation {:?} (only Count may omit it)",
                m.aggregation
            ),
        ));
    }
    // YAML can say .inf and .nan; neither is a number SQL can hold.
    let finite = |name: &str, value: Option<f64>| match value {
        Some(v) if !v.is_finite() => Err(PlanError::invalid(
            metric_name,
            format!("{field}.{name}"),
            "must be a finite number",
        )),
        _ => Ok(()),
    };
    if let Some(cap) = &m.cap {
        finite("cap.min", cap.min)?;
        finite("cap.max", cap.max)?;
        if cap.min.is_none() && cap.max.is_none() {
            return Err(PlanError::invalid(
                metric_name,
                format!("{field}.cap"),
                "set min, max or both",
            ));
        }
        if let (Some(min), Some(max)) = (cap.min, cap.max)
            && min > max
        {
            return Err(PlanError::invalid(
                metric_name,
                format!("{field}.cap"),
                "min must not exceed max",
            ));
        }
    }
    finite("threshold.value", m.threshold.as_ref().map(|t| t.value))
}

/// The reads of the statement: every source, column and dimension, each name
/// checked against the resource that contributes it.
fn assemble(r: &References, settings: Settings) -> Result<ResolvedCalculation, PlanError> {
    let engine = &settings.engine;
    let exposure_name = &r.exposure_name;
    let e = &r.exposure_table.spec;
    let exposure = ExposureRead {
        source: source(exposure_name, &e.source, engine)?,
        entity: column(exposure_name, "spec.entityColumn".into(), &e.entity_column)?,
        timestamp: column(
            exposure_name,
            "spec.timestampColumn".into(),
            &e.timestamp_column,
        )?,
        variant: column(
            exposure_name,
            "spec.variantColumn".into(),
            &e.variant_column,
        )?,
    };
    let mut tables = vec![TableRead::Exposure(r.exposure_table.name_any())];
    let mut read_table = |table: TableRead| {
        if !tables.contains(&table) {
            tables.push(table);
        }
    };
    let mut source_columns = Vec::new();
    for (field, column) in [
        ("spec.entityColumn", &exposure.entity),
        ("spec.timestampColumn", &exposure.timestamp),
        ("spec.variantColumn", &exposure.variant),
    ] {
        note(
            &mut source_columns,
            exposure_name,
            &exposure.source,
            field,
            column,
        );
    }

    let mut fact_reads: Vec<FactRead> = Vec::new();
    let mut measures = Vec::new();
    for side in &r.sides {
        let (fact, fact_name, m) = (side.fact, &side.fact_name, side.measurement);
        read_table(TableRead::Fact(fact.name_any()));
        let read = FactRead {
            source: source(fact_name, &fact.spec.source, engine)?,
            entity: column(
                fact_name,
                "spec.entityColumn".into(),
                &fact.spec.entity_column,
            )?,
            timestamp: column(
                fact_name,
                "spec.timestampColumn".into(),
                &fact.spec.timestamp_column,
            )?,
            filter: m.filter.clone(),
        };
        note(
            &mut source_columns,
            fact_name,
            &read.source,
            "spec.entityColumn",
            &read.entity,
        );
        note(
            &mut source_columns,
            fact_name,
            &read.source,
            "spec.timestampColumn",
            &read.timestamp,
        );
        let fact_source = read.source.clone();
        let read_index = match fact_reads.iter().position(|known| *known == read) {
            Some(i) => i,
            None => {
                fact_reads.push(read);
                fact_reads.len() - 1
            }
        };
        let measure_column = match &m.measurement {
            Some(name) => {
                let (index, declared) = fact
                    .spec
                    .measurements
                    .iter()
                    .enumerate()
                    .find(|(_, declared)| &declared.name == name)
                    .ok_or_else(|| {
                        let known: Vec<&str> = fact
                            .spec
                            .measurements
                            .iter()
                            .map(|declared| declared.name.as_str())
                            .collect();
                        PlanError::invalid(
                            &r.metric_name,
                            format!("{}.measurement", side.field),
                            format!(
                                "FactTable {} declares no measurement {name:?} (declared: {})",
                                fact.name_any(),
                                if known.is_empty() {
                                    "none".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        )
                    })?;
                let field = format!("spec.measurements[{index}].column");
                let measured = column(fact_name, field.clone(), declared.column())?;
                note(
                    &mut source_columns,
                    fact_name,
                    &fact_source,
                    &field,
                    &measured,
                );
                Some(measured)
            }
            // Only a count may omit it (`validate_side`).
            None => None,
        };
        measures.push(Measure {
            read: read_index,
            column: measure_column,
            aggregation: m.aggregation,
            cap_min: m.cap.as_ref().and_then(|c| c.min),
            cap_max: m.cap.as_ref().and_then(|c| c.max),
            threshold: m.threshold.as_ref().map(|t| (t.operator, t.value)),
            replace_missing_with_zero: m
                .replace_missing_with_zero
                .unwrap_or_else(|| m.aggregation.missing_is_zero_by_default()),
        });
    }

    let mut dimensions = Vec::new();
    for split in &r.splits {
        let field = &split.field;
        let from = match &split.table {
            Some((table, table_ref)) => {
                read_table(TableRead::Dimension(table.name_any()));
                let (index, declared) = table
                    .spec
                    .dimensions
                    .iter()
                    .enumerate()
                    .find(|(_, d)| d.name == split.split.name)
                    .ok_or_else(|| {
                        PlanError::invalid(
                            &r.calculation_name,
                            format!("{field}.name"),
                            format!(
                                "DimensionTable {} declares no dimension {:?}",
                                table.name_any(),
                                split.split.name
                            ),
                        )
                    })?;
                let table_source = source(table_ref, &table.spec.source, engine)?;
                let entity = column(
                    table_ref,
                    "spec.entityColumn".into(),
                    &table.spec.entity_column,
                )?;
                let dimension_field = format!("spec.dimensions[{index}].column");
                let dimension = column(table_ref, dimension_field.clone(), declared.column())?;
                let timestamp = table
                    .spec
                    .timestamp_column
                    .as_deref()
                    .map(|c| column(table_ref, "spec.timestampColumn".into(), c))
                    .transpose()?;
                let reads = [
                    ("spec.entityColumn", Some(&entity)),
                    (dimension_field.as_str(), Some(&dimension)),
                    ("spec.timestampColumn", timestamp.as_ref()),
                ];
                for (field, read) in reads {
                    if let Some(read) = read {
                        note(&mut source_columns, table_ref, &table_source, field, read);
                    }
                }
                DimensionFrom::Table {
                    source: table_source,
                    entity,
                    column: dimension,
                    timestamp,
                }
            }
            None => {
                let (index, declared) = e
                    .dimensions
                    .iter()
                    .enumerate()
                    .find(|(_, d)| d.name == split.split.name)
                    .ok_or_else(|| {
                        PlanError::invalid(
                            &r.calculation_name,
                            format!("{field}.name"),
                            format!(
                                "ExposureTable {} declares no dimension {:?}; name a dimensionTable or declare it on the exposure table",
                                r.exposure_table.name_any(),
                                split.split.name
                            ),
                        )
                    })?;
                let field = format!("spec.dimensions[{index}].column");
                let column = column(exposure_name, field.clone(), declared.column())?;
                note(
                    &mut source_columns,
                    exposure_name,
                    &exposure.source,
                    &field,
                    &column,
                );
                DimensionFrom::Exposure { column }
            }
        };
        dimensions.push(Dimension {
            name: split.split.name.clone(),
            from,
        });
    }

    let template = &r.calculation.spec.calculation;
    Ok(ResolvedCalculation {
        calculation: format!(
            "{}/{}",
            r.calculation
                .namespace()
                .unwrap_or_else(|| "default".into()),
            r.calculation.name_any()
        ),
        engine: settings.engine,
        exposure,
        fact_reads,
        measures,
        window_offset: settings.window_offset,
        window_end: settings.window_end,
        pre_exposure_window: settings.pre_exposure_window,
        dimensions,
        exposure_groups: template.exposure_groups.clone(),
        control: template.control().to_string(),
        tables,
        source_columns,
        times: settings.times,
    })
}
