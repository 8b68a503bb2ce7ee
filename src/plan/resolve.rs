use jiff::SignedDuration;
use kube::ResourceExt;

use crate::api::{
    self, Aggregation, Engine, MetricCalculation, MetricMeasurement, MetricType, TableSource,
    ThresholdOperator,
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

/// Follows the references of `calculation` within `catalog` and checks them.
pub fn resolve(
    calculation: &MetricCalculation,
    catalog: &Catalog,
) -> Result<ResolvedCalculation, PlanError> {
    let me = format!("MetricCalculation/{}", calculation.name_any());
    let spec = &calculation.spec;
    let template = &spec.calculation;

    let metric = catalog
        .metrics
        .get(&template.metric)
        .ok_or_else(|| missing(&me, "spec.metric", "Metric", &template.metric))?;
    let metric_name = format!("Metric/{}", metric.name_any());
    let exposure_table = catalog
        .exposure_tables
        .get(&template.exposure_table)
        .ok_or_else(|| {
            missing(
                &me,
                "spec.exposureTable",
                "ExposureTable",
                &template.exposure_table,
            )
        })?;
    let exposure_name = format!("ExposureTable/{}", exposure_table.name_any());
    let mut tables = vec![TableRead::Exposure(exposure_table.name_any())];
    let mut read = |table: TableRead| {
        if !tables.contains(&table) {
            tables.push(table);
        }
    };

    // The calculation's warehouse, else the exposure table's, else embedded DuckDB.
    let (warehouse_name, warehouse_field, warehouse_referrer) =
        match (&template.warehouse, &exposure_table.spec.warehouse) {
            (Some(name), _) => (Some(name.clone()), "spec.warehouse", me.as_str()),
            (None, Some(name)) => (Some(name.clone()), "spec.warehouse", exposure_name.as_str()),
            (None, None) => (None, "", ""),
        };
    let mut engine = match &warehouse_name {
        Some(name) => {
            let warehouse = catalog
                .warehouses
                .get(name)
                .ok_or_else(|| missing(warehouse_referrer, warehouse_field, "Warehouse", name))?;
            warehouse_engine(name, warehouse)?
        }
        None => EngineSettings::embedded(),
    };
    for directory in &catalog.local_data_directories {
        if !engine.duckdb.data_directories.contains(directory) {
            engine.duckdb.data_directories.push(directory.clone());
        }
    }
    let engine = engine;
    let same_warehouse = |resource: &str, table_warehouse: &Option<String>| match table_warehouse {
        Some(w) if Some(w) != warehouse_name.as_ref() => Err(PlanError::invalid(
            resource,
            "spec.warehouse",
            format!(
                "the table is in Warehouse {w:?} but the calculation runs on {}; a calculation reads from one warehouse",
                warehouse_name.as_deref().unwrap_or("the embedded DuckDB")
            ),
        )),
        _ => Ok(()),
    };

    let e = &exposure_table.spec;
    let exposure = ExposureRead {
        source: source(&exposure_name, &e.source, &engine)?,
        entity: column(&exposure_name, "spec.entityColumn".into(), &e.entity_column)?,
        timestamp: column(
            &exposure_name,
            "spec.timestampColumn".into(),
            &e.timestamp_column,
        )?,
        variant: column(
            &exposure_name,
            "spec.variantColumn".into(),
            &e.variant_column,
        )?,
    };

    let mut source_columns = Vec::new();
    for (field, column) in [
        ("spec.entityColumn", &exposure.entity),
        ("spec.timestampColumn", &exposure.timestamp),
        ("spec.variantColumn", &exposure.variant),
    ] {
        note(
            &mut source_columns,
            &exposure_name,
            &exposure.source,
            field,
            column,
        );
    }

    let sides: Vec<(&str, &MetricMeasurement)> = match metric.spec.metric_type {
        MetricType::Average => {
            let average = metric.spec.average.as_ref().ok_or_else(|| {
                PlanError::invalid(&metric_name, "spec.average", "required for type Average")
            })?;
            // The CRD refuses this too; without it, the ratio would be ignored.
            if metric.spec.ratio.is_some() {
                return Err(PlanError::invalid(
                    &metric_name,
                    "spec.ratio",
                    "must not be set for type Average",
                ));
            }
            vec![("spec.average.measurement", &average.measurement)]
        }
        MetricType::Ratio => {
            let ratio = metric.spec.ratio.as_ref().ok_or_else(|| {
                PlanError::invalid(&metric_name, "spec.ratio", "required for type Ratio")
            })?;
            if metric.spec.average.is_some() {
                return Err(PlanError::invalid(
                    &metric_name,
                    "spec.average",
                    "must not be set for type Ratio",
                ));
            }
            vec![
                ("spec.ratio.numerator", &ratio.numerator),
                ("spec.ratio.denominator", &ratio.denominator),
            ]
        }
    };
    let mut fact_reads: Vec<FactRead> = Vec::new();
    let mut measures = Vec::new();
    for (field, side) in sides {
        let fact = catalog.fact_tables.get(&side.fact_table).ok_or_else(|| {
            missing(
                &metric_name,
                &format!("{field}.factTable"),
                "FactTable",
                &side.fact_table,
            )
        })?;
        let fact_name = format!("FactTable/{}", fact.name_any());
        read(TableRead::Fact(fact.name_any()));
        same_warehouse(&fact_name, &fact.spec.warehouse)?;
        let filter = match &side.filter {
            Some(filter) => {
                check_fragment(filter)
                    .map_err(|e| PlanError::invalid(&metric_name, format!("{field}.filter"), e))?;
                Some(filter.clone())
            }
            None => None,
        };
        let read = FactRead {
            source: source(&fact_name, &fact.spec.source, &engine)?,
            entity: column(
                &fact_name,
                "spec.entityColumn".into(),
                &fact.spec.entity_column,
            )?,
            timestamp: column(
                &fact_name,
                "spec.timestampColumn".into(),
                &fact.spec.timestamp_column,
            )?,
            filter,
        };
        note(
            &mut source_columns,
            &fact_name,
            &read.source,
            "spec.entityColumn",
            &read.entity,
        );
        note(
            &mut source_columns,
            &fact_name,
            &read.source,
            "spec.timestampColumn",
            &read.timestamp,
        );
        let fact_source = read.source.clone();
        let read_index = match fact_reads.iter().position(|r| *r == read) {
            Some(i) => i,
            None => {
                fact_reads.push(read);
                fact_reads.len() - 1
            }
        };
        let measure_column = match &side.measurement {
            Some(name) => {
                let (index, declared) = fact
                    .spec
                    .measurements
                    .iter()
                    .enumerate()
                    .find(|(_, m)| &m.name == name)
                    .ok_or_else(|| {
                        let known: Vec<&str> = fact
                            .spec
                            .measurements
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect();
                        PlanError::invalid(
                            &metric_name,
                            format!("{field}.measurement"),
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
                let measured = column(&fact_name, field.clone(), declared.column())?;
                note(
                    &mut source_columns,
                    &fact_name,
                    &fact_source,
                    &field,
                    &measured,
                );
                Some(measured)
            }
            None if side.aggregation == Aggregation::Count => None,
            None => {
                return Err(PlanError::invalid(
                    &metric_name,
                    format!("{field}.measurement"),
                    format!(
                        "required for aggregation {:?} (only Count may omit it)",
                        side.aggregation
                    ),
                ));
            }
        };
        // YAML can say .inf and .nan; neither is a number SQL can hold.
        let finite = |name: &str, value: Option<f64>| match value {
            Some(v) if !v.is_finite() => Err(PlanError::invalid(
                &metric_name,
                format!("{field}.{name}"),
                "must be a finite number",
            )),
            _ => Ok(()),
        };
        if let Some(cap) = &side.cap {
            finite("cap.min", cap.min)?;
            finite("cap.max", cap.max)?;
            if cap.min.is_none() && cap.max.is_none() {
                return Err(PlanError::invalid(
                    &metric_name,
                    format!("{field}.cap"),
                    "set min, max or both",
                ));
            }
            if let (Some(min), Some(max)) = (cap.min, cap.max)
                && min > max
            {
                return Err(PlanError::invalid(
                    &metric_name,
                    format!("{field}.cap"),
                    "min must not exceed max",
                ));
            }
        }
        finite("threshold.value", side.threshold.as_ref().map(|t| t.value))?;
        measures.push(Measure {
            read: read_index,
            column: measure_column,
            aggregation: side.aggregation,
            cap_min: side.cap.as_ref().and_then(|c| c.min),
            cap_max: side.cap.as_ref().and_then(|c| c.max),
            threshold: side.threshold.as_ref().map(|t| (t.operator, t.value)),
            replace_missing_with_zero: side
                .replace_missing_with_zero
                .unwrap_or_else(|| side.aggregation.missing_is_zero_by_default()),
        });
    }

    let window = metric.spec.window.clone().unwrap_or_default();
    let window_offset = window
        .offset
        .as_ref()
        .map(|d| bounded(&metric_name, "spec.window.offset", d.as_signed()))
        .transpose()?
        .unwrap_or(SignedDuration::ZERO);
    let window_length = window
        .length
        .as_ref()
        .map(|d| bounded(&metric_name, "spec.window.length", d.as_signed()))
        .transpose()?;
    // Both are bounded, so their sum is far from overflowing; checked all the same.
    let window_end = window_length
        .map(|length| {
            window_offset.checked_add(length).ok_or_else(|| {
                PlanError::invalid(&metric_name, "spec.window", "offset + length is too large")
            })
        })
        .transpose()?;
    let pre_exposure_window = metric
        .spec
        .variance_reduction
        .as_ref()
        .map(|v| {
            bounded(
                &metric_name,
                "spec.varianceReduction.preExposureWindow",
                v.pre_exposure_window.as_signed(),
            )
        })
        .transpose()?;

    let start = spec.start_time.0;
    let end = spec.end_time.0;
    if end <= start {
        return Err(PlanError::invalid(
            &me,
            "spec.endTime",
            "must be after spec.startTime",
        ));
    }
    let exposure_end = match &spec.exposure_end_time {
        Some(t) if t.0 <= start || t.0 > end => {
            return Err(PlanError::invalid(
                &me,
                "spec.exposureEndTime",
                "must be after spec.startTime and not after spec.endTime",
            ));
        }
        Some(t) => t.0,
        None => end,
    };
    let fact_start = match pre_exposure_window {
        Some(pre) => start.checked_sub(pre).map_err(|e| {
            PlanError::invalid(&metric_name, "spec.varianceReduction.preExposureWindow", e)
        })?,
        None => start,
    };

    let mut dimensions = Vec::new();
    for (i, split) in template.split_dimensions.iter().enumerate() {
        let field = format!("spec.splitDimensions[{i}]");
        let from = match &split.dimension_table {
            Some(table_name) => {
                let table = catalog.dimension_tables.get(table_name).ok_or_else(|| {
                    missing(
                        &me,
                        &format!("{field}.dimensionTable"),
                        "DimensionTable",
                        table_name,
                    )
                })?;
                let table_ref = format!("DimensionTable/{}", table.name_any());
                read(TableRead::Dimension(table.name_any()));
                same_warehouse(&table_ref, &table.spec.warehouse)?;
                let (index, declared) = table
                    .spec
                    .dimensions
                    .iter()
                    .enumerate()
                    .find(|(_, d)| d.name == split.name)
                    .ok_or_else(|| {
                        PlanError::invalid(
                            &me,
                            format!("{field}.name"),
                            format!(
                                "DimensionTable {table_name} declares no dimension {:?}",
                                split.name
                            ),
                        )
                    })?;
                let table_source = source(&table_ref, &table.spec.source, &engine)?;
                let entity = column(
                    &table_ref,
                    "spec.entityColumn".into(),
                    &table.spec.entity_column,
                )?;
                let dimension_field = format!("spec.dimensions[{index}].column");
                let dimension = column(&table_ref, dimension_field.clone(), declared.column())?;
                let timestamp = table
                    .spec
                    .timestamp_column
                    .as_deref()
                    .map(|c| column(&table_ref, "spec.timestampColumn".into(), c))
                    .transpose()?;
                let read = [
                    ("spec.entityColumn", Some(&entity)),
                    (dimension_field.as_str(), Some(&dimension)),
                    ("spec.timestampColumn", timestamp.as_ref()),
                ];
                for (field, read) in read {
                    if let Some(read) = read {
                        note(&mut source_columns, &table_ref, &table_source, field, read);
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
                    .find(|(_, d)| d.name == split.name)
                    .ok_or_else(|| {
                        PlanError::invalid(
                            &me,
                            format!("{field}.name"),
                            format!(
                                "ExposureTable {} declares no dimension {:?}; name a dimensionTable or declare it on the exposure table",
                                exposure_table.name_any(),
                                split.name
                            ),
                        )
                    })?;
                let field = format!("spec.dimensions[{index}].column");
                let column = column(&exposure_name, field.clone(), declared.column())?;
                note(
                    &mut source_columns,
                    &exposure_name,
                    &exposure.source,
                    &field,
                    &column,
                );
                DimensionFrom::Exposure { column }
            }
        };
        if dimensions.iter().any(|d: &Dimension| d.name == split.name) {
            return Err(PlanError::invalid(
                &me,
                format!("{field}.name"),
                "is listed twice",
            ));
        }
        dimensions.push(Dimension {
            name: split.name.clone(),
            from,
        });
    }

    if let Some(i) = template.exposure_groups.iter().position(|g| g.is_empty()) {
        return Err(PlanError::invalid(
            &me,
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
            &me,
            "spec.exposureGroups",
            format!(
                "does not contain the control variant {control:?}; add it, or set \
                 spec.analysis.control to one of the groups"
            ),
        ));
    }

    Ok(ResolvedCalculation {
        calculation: format!(
            "{}/{}",
            calculation.namespace().unwrap_or_else(|| "default".into()),
            calculation.name_any()
        ),
        engine,
        exposure,
        fact_reads,
        measures,
        window_offset,
        window_end,
        pre_exposure_window,
        dimensions,
        exposure_groups: template.exposure_groups.clone(),
        control: template.control().to_string(),
        tables,
        source_columns,
        times: PlanTimes {
            exposure_start: start,
            exposure_end,
            fact_start,
            fact_end: end,
        },
    })
}
