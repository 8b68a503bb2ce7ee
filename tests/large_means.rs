//! Variances, covariances and the analysis built on them stay exact when the mean is
//! far from zero: generated data at mean/sd = 10⁴, 10⁶ and 10⁸ run through `tally run`
//! (the real SQL on DuckDB), every second moment, standard error and p-value compared
//! with an exact reference computed here in integer arithmetic.
//!
//! Every value of a dataset lies in one binade, so it is an integer multiple of that
//! binade's unit in the last place: deviations from a pivot in the binade are exact
//! integers, and their sums and products are exact in `i128`. Each reference figure is
//! an exact rational rounded once or twice to a double.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use tally::cli::{self, OutputFormat};

/// Entities per variant.
const PER_VARIANT: usize = 10_000;
/// How close every figure must be (testdata/README.md: moments to 1e-9 relative;
/// analysis figures are held to the same here).
const TOLERANCE: f64 = 1e-9;

/// SplitMix64 with Box–Muller: reproducible standard normals without a dependency.
struct Normals(u64);

impl Normals {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // In (0, 1]: the logarithm below stays finite.
        ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// One entity's values: post numerator y and denominator d, pre numerator x (the
/// CUPED covariate of an average) and pre denominator b.
#[derive(Clone, Copy)]
struct Entity {
    treatment: bool,
    y: f64,
    d: f64,
    x: f64,
    b: f64,
}

fn entities(mean: f64, seed: u64) -> Vec<Entity> {
    let mut normals = Normals(seed);
    (0..2 * PER_VARIANT)
        .map(|i| {
            let treatment = i % 2 == 1;
            let (z1, z2, z3, z4) = (
                normals.next(),
                normals.next(),
                normals.next(),
                normals.next(),
            );
            let effect = if treatment { 0.05 } else { 0.0 };
            Entity {
                treatment,
                x: mean + z1,
                b: mean + 0.6 * z1 + 0.8 * z3,
                y: mean + effect + 0.8 * z1 + 0.6 * z2,
                d: mean + 0.4 * effect + 0.5 * z1 + 0.3 * z2 + 0.7 * z4,
            }
        })
        .collect()
}

/// Exact sums of K variables around a pivot, in units of the binade's last place.
struct Exact<const K: usize> {
    n: i128,
    pivot: f64,
    unit: f64,
    sums: [i128; K],
    products: [[i128; K]; K],
}

fn unit_of(value: f64) -> f64 {
    let exponent = value.abs().log2().floor() as i32;
    2f64.powi(exponent - 52)
}

impl<const K: usize> Exact<K> {
    // Sums of a symmetric matrix index it by (i, j): a range loop is clearest.
    #[allow(clippy::needless_range_loop)]
    fn new(rows: &[[f64; K]], pivot: f64) -> Self {
        let unit = unit_of(pivot);
        let mut sums = [0i128; K];
        let mut products = [[0i128; K]; K];
        for row in rows {
            let mut units = [0i128; K];
            for (k, value) in row.iter().enumerate() {
                assert_eq!(
                    unit_of(*value),
                    unit,
                    "{value} is outside the pivot's binade"
                );
                // Exact: both in one binade (Sterbenz), and the unit is a power of two.
                let deviation = (value - pivot) / unit;
                assert_eq!(deviation.fract(), 0.0);
                units[k] = deviation as i128;
            }
            for i in 0..K {
                sums[i] += units[i];
                for j in 0..K {
                    products[i][j] = products[i][j]
                        .checked_add(units[i] * units[j])
                        .expect("products fit in i128");
                }
            }
        }
        Self {
            n: rows.len() as i128,
            pivot,
            unit,
            sums,
            products,
        }
    }

    fn mean(&self, i: usize) -> f64 {
        self.pivot + self.sums[i] as f64 / self.n as f64 * self.unit
    }

    fn covariance(&self, i: usize, j: usize) -> f64 {
        let numerator = self.n * self.products[i][j] - self.sums[i] * self.sums[j];
        numerator as f64 / (self.n * (self.n - 1)) as f64 * self.unit * self.unit
    }

    /// Σv_i·v_j of the raw values.
    fn raw_product(&self, i: usize, j: usize) -> f64 {
        let (p, u, n) = (self.pivot, self.unit, self.n as f64);
        n * p * p
            + p * u * (self.sums[i] + self.sums[j]) as f64
            + self.products[i][j] as f64 * u * u
    }

    fn raw_sum(&self, i: usize) -> f64 {
        self.n as f64 * self.pivot + self.sums[i] as f64 * self.unit
    }

    /// mean_i(self) − mean_i(other), both around one pivot.
    fn mean_difference(&self, other: &Self, i: usize) -> f64 {
        assert_eq!(self.pivot, other.pivot);
        let numerator = self.sums[i] * other.n - other.sums[i] * self.n;
        numerator as f64 / (self.n * other.n) as f64 * self.unit
    }

    /// Σv_i/Σv_j of self minus that of other, both around one pivot.
    fn ratio_difference(&self, other: &Self, i: usize, j: usize) -> f64 {
        assert_eq!(self.pivot, other.pivot);
        // Σv = n·P + s in units, P the pivot in units: the n_t·n_c·P² terms cancel.
        let pivot = (self.pivot / self.unit) as i128;
        let (t, c) = (self, other);
        let linear = t.n * c.sums[j] + c.n * t.sums[i] - c.n * t.sums[j] - t.n * c.sums[i];
        let numerator = pivot
            .checked_mul(linear)
            .and_then(|v| v.checked_add(t.sums[i] * c.sums[j] - c.sums[i] * t.sums[j]))
            .expect("ratio difference fits in i128");
        numerator as f64 * self.unit * self.unit / (t.raw_sum(j) * c.raw_sum(j))
    }

    fn pooled(&self, other: &Self) -> Self {
        assert_eq!(self.pivot, other.pivot);
        let mut out = Self {
            n: self.n + other.n,
            pivot: self.pivot,
            unit: self.unit,
            sums: self.sums,
            products: self.products,
        };
        for i in 0..K {
            out.sums[i] += other.sums[i];
            for j in 0..K {
                out.products[i][j] += other.products[i][j];
            }
        }
        out
    }
}

fn p_value(difference: f64, se: f64) -> f64 {
    libm::erfc((difference / se).abs() / std::f64::consts::SQRT_2)
}

#[derive(Clone, Copy, PartialEq)]
enum Shape {
    Average,
    AverageCuped,
    Ratio,
    RatioCuped,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Average => "average",
            Shape::AverageCuped => "average-cuped",
            Shape::Ratio => "ratio",
            Shape::RatioCuped => "ratio-cuped",
        }
    }

    fn metric(self) -> String {
        let (kind, body) = match self {
            Shape::Average | Shape::AverageCuped => (
                "Average",
                "  average:\n    measurement: {factTable: facts, measurement: amount, aggregation: Sum}\n",
            ),
            Shape::Ratio | Shape::RatioCuped => (
                "Ratio",
                "  ratio:\n    numerator: {factTable: facts, measurement: amount, aggregation: Sum}\n    denominator: {factTable: facts, measurement: weight, aggregation: Sum}\n",
            ),
        };
        let cuped = matches!(self, Shape::AverageCuped | Shape::RatioCuped);
        let cuped = if cuped {
            "  varianceReduction: {preExposureWindow: 7d}\n"
        } else {
            ""
        };
        format!("  type: {kind}\n{body}{cuped}")
    }
}

fn write_experiment(dir: &Path, data: &[Entity], shape: Shape) {
    let mut exposures = String::from("user_id,ts,variant\n");
    let mut facts = String::from("user_id,ts,amount,weight\n");
    for (user, e) in data.iter().enumerate() {
        let variant = if e.treatment { "treatment" } else { "control" };
        let _ = writeln!(exposures, "{user},2026-10-01T10:00:00Z,{variant}");
        // `{}` prints the shortest text that reads back as the same double.
        let _ = writeln!(facts, "{user},2026-10-02T10:00:00Z,{},{}", e.y, e.d);
        let _ = writeln!(facts, "{user},2026-09-30T10:00:00Z,{},{}", e.x, e.b);
    }
    std::fs::write(dir.join("exposures.csv"), exposures).unwrap();
    std::fs::write(dir.join("facts.csv"), facts).unwrap();
    std::fs::write(
        dir.join("manifests.yaml"),
        format!(
            r#"
apiVersion: tally.dev/v1alpha1
kind: ExposureTable
metadata: {{name: exp}}
spec:
  source: {{files: exposures.csv}}
  entityColumn: user_id
  timestampColumn: ts
  variantColumn: variant
---
apiVersion: tally.dev/v1alpha1
kind: FactTable
metadata: {{name: facts}}
spec:
  source: {{files: facts.csv}}
  entityColumn: user_id
  timestampColumn: ts
  measurements: [{{name: amount}}, {{name: weight}}]
---
apiVersion: tally.dev/v1alpha1
kind: Metric
metadata: {{name: m}}
spec:
{metric}---
apiVersion: tally.dev/v1alpha1
kind: MetricCalculation
metadata: {{name: mc}}
spec:
  metric: m
  exposureTable: exp
  startTime: "2026-10-01T00:00:00Z"
  endTime: "2026-10-10T00:00:00Z"
"#,
            metric = shape.metric()
        ),
    )
    .unwrap();
}

fn run(name: &str, data: &[Entity], shape: Shape) -> Value {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("tally-large-means-{name}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    write_experiment(&dir, data, shape);
    let output = cli::run(&[dir.join("manifests.yaml")], &[], OutputFormat::Json)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    std::fs::remove_dir_all(&dir).ok();
    let items: Vec<Value> = serde_json::from_str(&output).unwrap();
    items[0]["status"].clone()
}

/// Figures of one run against their references: the largest relative error per kind
/// of figure, and every figure beyond the tolerance.
#[derive(Default)]
struct Report {
    worst: Vec<(String, f64)>,
    failures: Vec<String>,
}

impl Report {
    fn check(&mut self, kind: &str, path: &str, actual: &Value, expected: f64) {
        let error = match actual.as_f64() {
            Some(actual) => (actual - expected).abs() / expected.abs(),
            None => f64::INFINITY,
        };
        if error.is_nan() || error > TOLERANCE {
            self.failures.push(format!(
                "{path}: expected {expected:e}, found {actual} (relative error {error:e})"
            ));
        }
        match self.worst.iter_mut().find(|(k, _)| k == kind) {
            Some((_, worst)) => *worst = worst.max(error),
            None => self.worst.push((kind.to_string(), error)),
        }
    }
}

fn overall<'a>(status: &'a Value, variant: &str) -> &'a Value {
    status["metricResults"]["metricBucketStats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["variant"] == variant && b["dimensions"].as_array().unwrap().is_empty())
        .unwrap_or_else(|| panic!("no overall bucket for {variant}"))
}

fn comparison(status: &Value) -> &Value {
    &status["analysis"]["comparisons"][0]
}

fn split<const K: usize>(data: &[Entity], row: impl Fn(&Entity) -> [f64; K]) -> [Exact<K>; 2] {
    // One pivot for both groups: the first entity's value of its first variable.
    let pivot = row(&data[0])[0];
    [false, true].map(|treatment| {
        let rows: Vec<[f64; K]> = data
            .iter()
            .filter(|e| e.treatment == treatment)
            .map(&row)
            .collect();
        Exact::new(&rows, pivot)
    })
}

fn check_effect(report: &mut Report, label: &str, effect: &Value, difference: f64, se: f64) {
    report.check(
        "difference",
        &format!("{label}.difference"),
        &effect["difference"],
        difference,
    );
    report.check(
        "standardError",
        &format!("{label}.standardError"),
        &effect["standardError"],
        se,
    );
    report.check(
        "pValue",
        &format!("{label}.pValue"),
        &effect["pValue"],
        p_value(difference, se),
    );
}

fn check_average(report: &mut Report, status: &Value, data: &[Entity]) {
    let [c, t] = split(data, |e| [e.y]);
    for (variant, exact) in [("control", &c), ("treatment", &t)] {
        let s = &overall(status, variant)["summaryStats"]["averageSummaryStats"];
        report.check(
            "variance",
            &format!("{variant}.variance"),
            &s["variance"],
            exact.covariance(0, 0),
        );
        report.check(
            "sum",
            &format!("{variant}.sum"),
            &s["sum"],
            exact.raw_sum(0),
        );
        report.check(
            "sum",
            &format!("{variant}.sumOfSquares"),
            &s["sumOfSquares"],
            exact.raw_product(0, 0),
        );
        report.check(
            "mean",
            &format!("{variant}.mean"),
            &s["mean"],
            exact.mean(0),
        );
    }
    let (n_t, n_c) = (t.n as f64, c.n as f64);
    let (var_t, var_c) = (t.covariance(0, 0), c.covariance(0, 0));
    let difference = t.mean_difference(&c, 0);
    let se = (var_t / n_t + var_c / n_c).sqrt();
    check_effect(
        report,
        "absolute",
        &comparison(status)["absolute"],
        difference,
        se,
    );
    let mean_c = c.mean(0);
    let ratio = t.mean(0) / mean_c;
    let relative_se = (var_t / n_t + ratio * ratio * var_c / n_c).sqrt() / mean_c.abs();
    check_effect(
        report,
        "relative",
        &comparison(status)["relative"],
        difference / mean_c,
        relative_se,
    );
}

fn check_average_cuped(report: &mut Report, status: &Value, data: &[Entity]) {
    const X: usize = 0;
    const Y: usize = 1;
    let [c, t] = split(data, |e| [e.x, e.y]);
    for (variant, exact) in [("control", &c), ("treatment", &t)] {
        let s = &overall(status, variant)["summaryStats"]["averageSummaryStats"];
        report.check(
            "variance",
            &format!("{variant}.variance"),
            &s["variance"],
            exact.covariance(Y, Y),
        );
        let vr = &s["varianceReductionStats"];
        report.check(
            "variance",
            &format!("{variant}.vr.variance"),
            &vr["variance"],
            exact.covariance(X, X),
        );
        report.check(
            "covariance",
            &format!("{variant}.vr.covariance"),
            &vr["covariance"],
            exact.covariance(X, Y),
        );
        report.check(
            "sum",
            &format!("{variant}.vr.sumOfSquares"),
            &vr["sumOfSquares"],
            exact.raw_product(X, X),
        );
        report.check(
            "sum",
            &format!("{variant}.vr.sumOfProducts"),
            &vr["sumOfProducts"],
            exact.raw_product(X, Y),
        );
    }
    let pooled = t.pooled(&c);
    let theta = pooled.covariance(X, Y) / pooled.covariance(X, X);
    report.check("theta", "theta", &comparison(status)["theta"], theta);
    let difference = t.mean_difference(&c, Y) - theta * t.mean_difference(&c, X);
    let adjusted = |m: &Exact<2>| {
        (m.covariance(Y, Y) + theta * theta * m.covariance(X, X) - 2.0 * theta * m.covariance(X, Y))
            / m.n as f64
    };
    let se = (adjusted(&t) + adjusted(&c)).sqrt();
    check_effect(
        report,
        "absolute",
        &comparison(status)["absolute"],
        difference,
        se,
    );
}

fn check_ratio(report: &mut Report, status: &Value, data: &[Entity], cuped: bool) {
    const A: usize = 0;
    const B: usize = 1;
    const Y: usize = 2;
    const D: usize = 3;
    let [c, t] = split(data, |e| [e.x, e.b, e.y, e.d]);
    for (variant, exact) in [("control", &c), ("treatment", &t)] {
        let s = &overall(status, variant)["summaryStats"]["ratioSummaryStats"];
        let at = |name: &str| format!("{variant}.{name}");
        report.check(
            "variance",
            &at("numeratorVariance"),
            &s["numeratorVariance"],
            exact.covariance(Y, Y),
        );
        report.check(
            "variance",
            &at("denominatorVariance"),
            &s["denominatorVariance"],
            exact.covariance(D, D),
        );
        report.check(
            "covariance",
            &at("numeratorDenominatorCovariance"),
            &s["numeratorDenominatorCovariance"],
            exact.covariance(Y, D),
        );
        report.check(
            "sum",
            &at("sumOfProducts"),
            &s["sumOfProducts"],
            exact.raw_product(Y, D),
        );
        if cuped {
            let vr = &s["varianceReductionStats"];
            let at = |name: &str| format!("{variant}.vr.{name}");
            for (name, kind, i, j) in [
                ("numeratorVariance", "variance", A, A),
                ("denominatorVariance", "variance", B, B),
                ("numeratorDenominatorCovariance", "covariance", A, B),
                ("preNumeratorPostNumeratorCovariance", "covariance", A, Y),
                ("preNumeratorPostDenominatorCovariance", "covariance", A, D),
                ("preDenominatorPostNumeratorCovariance", "covariance", B, Y),
                (
                    "preDenominatorPostDenominatorCovariance",
                    "covariance",
                    B,
                    D,
                ),
            ] {
                report.check(kind, &at(name), &vr[name], exact.covariance(i, j));
            }
            for (name, i, j) in [
                ("numeratorSumOfSquares", A, A),
                ("sumOfProducts", A, B),
                ("numeratorDenominatorSumOfProducts", A, D),
                ("denominatorNumeratorSumOfProducts", B, Y),
            ] {
                report.check("sum", &at(name), &vr[name], exact.raw_product(i, j));
            }
        }
    }
    let variance = |m: &Exact<4>| {
        let (mean_y, mean_d) = (m.mean(Y), m.mean(D));
        let r = mean_y / mean_d;
        (m.covariance(Y, Y) - 2.0 * r * m.covariance(Y, D) + r * r * m.covariance(D, D))
            / (mean_d * mean_d)
            / m.n as f64
    };
    let difference = t.ratio_difference(&c, Y, D);
    let se = (variance(&t) + variance(&c)).sqrt();
    check_effect(
        report,
        "absolute",
        &comparison(status)["absolute"],
        difference,
        se,
    );
}

#[test]
fn second_moments_are_exact_however_large_the_mean() {
    let mut failures = Vec::new();
    let mut table = String::new();
    for (level, mean) in [(4, 1e4), (6, 1e6), (8, 1e8)] {
        let data = entities(mean, 20_260_000 + level);
        for shape in [
            Shape::Average,
            Shape::AverageCuped,
            Shape::Ratio,
            Shape::RatioCuped,
        ] {
            let name = format!("{}-1e{level}", shape.name());
            let status = run(&name, &data, shape);
            let mut report = Report::default();
            match shape {
                Shape::Average => check_average(&mut report, &status, &data),
                Shape::AverageCuped => check_average_cuped(&mut report, &status, &data),
                Shape::Ratio => check_ratio(&mut report, &status, &data, false),
                Shape::RatioCuped => check_ratio(&mut report, &status, &data, true),
            }
            let worst: Vec<String> = report
                .worst
                .iter()
                .map(|(kind, error)| format!("{kind} {error:.1e}"))
                .collect();
            let _ = writeln!(table, "{name:>20}: {}", worst.join(", "));
            failures.extend(report.failures.into_iter().map(|f| format!("{name}: {f}")));
        }
    }
    // The largest relative error per kind of figure, shown with --nocapture.
    println!("{table}");
    assert!(
        failures.is_empty(),
        "{} figures beyond {TOLERANCE:e} relative:\n{}\n{table}",
        failures.len(),
        failures.join("\n")
    );
}
