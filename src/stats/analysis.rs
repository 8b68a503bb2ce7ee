use std::collections::BTreeMap;

use crate::api::{Analysis, Comparison, Effect, SampleRatioMismatch};

use super::{
    Moments, Z_975, chi_square_survival,
    moments::beyond_rounding,
    normal_two_sided_p,
    summary::{BucketMoments, BucketSums, CupedSums},
};

/// What the analysis reads: the overall bucket of each variant.
pub struct AnalysisInput<'a> {
    pub buckets: &'a [BucketSums],
    pub control: &'a str,
    /// Variants the experiment expects (its exposure groups); empty: those observed.
    /// An expected variant with no entity counts as 0 in the sample ratio test.
    pub expected_variants: &'a [String],
    pub multiple_variant_entities: i64,
}

/// Effects of every treatment against control, and the sample ratio mismatch test.
pub fn analyse(input: &AnalysisInput) -> Analysis {
    let overall: BTreeMap<&str, &BucketSums> = input
        .buckets
        .iter()
        .filter(|b| b.dimension.is_none())
        .map(|b| (b.variant.as_str(), b))
        .collect();
    let comparisons = match overall.get(input.control) {
        Some(control) => overall
            .iter()
            .filter(|(variant, _)| **variant != input.control)
            .map(|(variant, treatment)| compare(variant, input.control, treatment, control))
            .collect(),
        None => Vec::new(),
    };
    let mut counts: BTreeMap<String, i64> = input
        .expected_variants
        .iter()
        .map(|v| (v.clone(), 0))
        .collect();
    for (variant, bucket) in &overall {
        counts.insert(variant.to_string(), bucket.entities);
    }
    Analysis {
        comparisons,
        multiple_variant_entities: input.multiple_variant_entities,
        sample_ratio_mismatch: (!counts.is_empty()).then(|| SampleRatioMismatch {
            p_value: sample_ratio_mismatch_p(&counts),
            counts,
        }),
        entities_without_value: overall.values().map(|b| b.count_missing).sum(),
    }
}

fn compare(variant: &str, control: &str, t: &BucketSums, c: &BucketSums) -> Comparison {
    let mut comparison = Comparison {
        variant: variant.to_string(),
        control: control.to_string(),
        absolute: None,
        relative: None,
        theta: None,
    };
    match (&t.values, &c.values) {
        (
            BucketMoments::Average {
                post: pt,
                cuped: Some(xt),
            },
            BucketMoments::Average {
                post: pc,
                cuped: Some(xc),
            },
        ) => match cuped_effect(pt, xt, pc, xc) {
            Some((theta, effect)) => {
                comparison.theta = Some(theta);
                comparison.absolute = effect;
            }
            // A group with no entity that has both values has no CUPED means; the
            // unadjusted comparison is what is left.
            None => {
                comparison.absolute = average_absolute(pt, pc);
                comparison.relative = average_relative(pt, pc);
            }
        },
        (BucketMoments::Average { post: pt, .. }, BucketMoments::Average { post: pc, .. }) => {
            comparison.absolute = average_absolute(pt, pc);
            comparison.relative = average_relative(pt, pc);
        }
        (BucketMoments::Ratio { post: pt, .. }, BucketMoments::Ratio { post: pc, .. }) => {
            comparison.absolute = ratio_absolute(pt, pc);
        }
        // Buckets of one calculation always have one shape.
        _ => {}
    }
    comparison
}

/// An effect from its difference and standard error: 95% interval, two-sided z-test.
fn effect(difference: f64, standard_error: Option<f64>) -> Option<Effect> {
    if !difference.is_finite() {
        return None;
    }
    let se = standard_error.filter(|se| se.is_finite() && *se > 0.0);
    Some(Effect {
        difference,
        standard_error: se,
        ci_lower: se.map(|se| difference - Z_975 * se),
        ci_upper: se.map(|se| difference + Z_975 * se),
        p_value: se.map(|se| normal_two_sided_p(difference / se)),
    })
}

fn average_absolute(t: &Moments<1>, c: &Moments<1>) -> Option<Effect> {
    let difference = t.mean_difference(c, 0)?;
    let se = (|| Some((t.variance(0)? / t.n as f64 + c.variance(0)? / c.n as f64).sqrt()))();
    effect(difference, se)
}

fn average_relative(t: &Moments<1>, c: &Moments<1>) -> Option<Effect> {
    let (mean_t, mean_c) = (t.mean(0)?, c.mean(0)?);
    // mean_t/mean_c − 1, from the difference of the means, which keeps the digits
    // that the means round away when they are far from zero.
    let difference = t.mean_difference(c, 0)? / mean_c;
    let se = (|| {
        let (var_t, var_c) = (t.variance(0)?, c.variance(0)?);
        let (n_t, n_c) = (t.n as f64, c.n as f64);
        // var_t/(n_t·μc²) + μt²·var_c/(n_c·μc⁴), without fourth powers that overflow
        // or underflow for means far from 1.
        let ratio = mean_t / mean_c;
        Some((var_t / n_t + ratio.powi(2) * var_c / n_c).sqrt() / mean_c.abs())
    })();
    effect(difference, se)
}

/// CUPED: theta from the pooled pre/post sums of both groups, then the adjusted
/// difference and variance per group. `None` when a group has no entity with both a
/// pre and a post value.
///
/// theta = cov(y, x)/var(x) is undefined when x does not vary (no pre-exposure facts
/// at all, say, so every x is 0): then theta = 0, no adjustment, and the result is the
/// plain difference of the post means with its standard error.
fn cuped_effect(
    post_t: &Moments<1>,
    cuped_t: &CupedSums<2>,
    post_c: &Moments<1>,
    cuped_c: &CupedSums<2>,
) -> Option<(f64, Option<Effect>)> {
    const X: usize = 0;
    const Y: usize = 1;
    let (t, c) = (&cuped_t.moments, &cuped_c.moments);
    if t.n == 0 || c.n == 0 {
        return None;
    }
    let pooled = *t + *c;
    let theta = match (pooled.covariance(X, Y), pooled.variance(X)) {
        // A variance within rounding of zero, relative to the mean square of x about
        // its shift (the scale the variance is computed at), is zero: dividing by it
        // would make theta rounding noise.
        (Some(covariance), Some(variance)) if variance > 1e-12 * pooled.shifted_mean_square(X) => {
            Some(covariance / variance).filter(|theta| theta.is_finite())
        }
        _ => None,
    }
    .unwrap_or(0.0);
    let difference = t.mean_difference(c, Y)? - theta * t.mean_difference(c, X)?;
    let adjusted_variance = |post: &Moments<1>, m: &Moments<2>| {
        let variance = post.variance(0)? + theta.powi(2) * m.variance(X)?
            - 2.0 * theta * m.covariance(X, Y)?;
        let rounding = post.rounding(0, 0)
            + theta.powi(2) * m.rounding(X, X)
            + 2.0 * theta.abs() * m.rounding(X, Y);
        Some(beyond_rounding(variance, rounding))
    };
    let se = (|| {
        Some(
            (adjusted_variance(post_t, t)? / t.n as f64
                + adjusted_variance(post_c, c)? / c.n as f64)
                .sqrt(),
        )
    })();
    Some((theta, effect(difference, se)))
}

/// Delta-method variance of a ratio of sums, from per-entity [y, d] moments.
fn ratio_and_variance(m: &Moments<2>) -> Option<(f64, Option<f64>)> {
    const Y: usize = 0;
    const D: usize = 1;
    let ratio = m.sum(Y) / m.sum(D);
    let variance = (|| {
        let (mean_y, mean_d) = (m.mean(Y)?, m.mean(D)?);
        // var_y/μd² − 2μy·cov/μd³ + μy²·var_d/μd⁴ with R = μy/μd factored out, so no
        // fourth power overflows or underflows for means far from 1.
        let r = mean_y / mean_d;
        let variance =
            m.variance(Y)? - 2.0 * r * m.covariance(Y, D)? + r.powi(2) * m.variance(D)?;
        let rounding =
            m.rounding(Y, Y) + 2.0 * r.abs() * m.rounding(Y, D) + r.powi(2) * m.rounding(D, D);
        // Zero, not noise, when every entity has the same ratio.
        Some(beyond_rounding(variance, rounding) / mean_d.powi(2) / m.n as f64)
    })();
    ratio.is_finite().then_some((ratio, variance))
}

fn ratio_absolute(t: &Moments<2>, c: &Moments<2>) -> Option<Effect> {
    const Y: usize = 0;
    const D: usize = 1;
    let (_, var_t) = ratio_and_variance(t)?;
    let (_, var_c) = ratio_and_variance(c)?;
    let se = var_t.zip(var_c).map(|(a, b)| (a + b).sqrt());
    effect(t.ratio_difference(c, Y, D)?, se)
}

/// Chi-square goodness of fit of the counts against an equal split.
fn sample_ratio_mismatch_p(counts: &BTreeMap<String, i64>) -> Option<f64> {
    let total: i64 = counts.values().sum();
    if counts.len() < 2 || total == 0 {
        return None;
    }
    let expected = total as f64 / counts.len() as f64;
    let statistic: f64 = counts
        .values()
        .map(|&observed| (observed as f64 - expected).powi(2) / expected)
        .sum();
    Some(chi_square_survival(statistic, (counts.len() - 1) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::summary::BucketMoments;

    fn average_bucket(variant: &str, values: &[f64]) -> BucketSums {
        let rows: Vec<[f64; 1]> = values.iter().map(|v| [*v]).collect();
        BucketSums {
            variant: variant.into(),
            dimension: None,
            entities: values.len() as i64,
            count_missing: 0,
            count_missing_rows: 0,
            values: BucketMoments::Average {
                post: Moments::from_observations(&rows),
                cuped: None,
            },
        }
    }

    #[test]
    fn average_effect_and_srm() {
        let buckets = [
            average_bucket("control", &[1.0, 2.0, 3.0, 4.0]),
            average_bucket("treatment", &[2.0, 3.0, 4.0, 5.0, 6.0, 7.0]),
        ];
        let analysis = analyse(&AnalysisInput {
            buckets: &buckets,
            control: "control",
            expected_variants: &[],
            multiple_variant_entities: 3,
        });
        assert_eq!(analysis.multiple_variant_entities, 3);
        let comparison = &analysis.comparisons[0];
        assert_eq!(comparison.variant, "treatment");
        let absolute = comparison.absolute.as_ref().unwrap();
        assert!((absolute.difference - 2.0).abs() < 1e-12);
        // var_c = 5/3, var_t = 3.5: se = √(3.5/6 + (5/3)/4)
        let se = (3.5f64 / 6.0 + (5.0 / 3.0) / 4.0).sqrt();
        assert!((absolute.standard_error.unwrap() - se).abs() < 1e-12);
        assert!((absolute.ci_upper.unwrap() - (2.0 + Z_975 * se)).abs() < 1e-12);
        let relative = comparison.relative.as_ref().unwrap();
        assert!((relative.difference - (4.5 / 2.5 - 1.0)).abs() < 1e-12);
        let srm = analysis.sample_ratio_mismatch.unwrap();
        assert_eq!(srm.counts["control"], 4);
        // χ² = (4−5)²/5 + (6−5)²/5 = 0.4 with 1 dof
        let p = srm.p_value.unwrap();
        assert!((p - libm::erfc((0.2f64).sqrt())).abs() < 1e-12);
    }

    #[test]
    fn entities_without_a_value_are_counted_over_the_overall_buckets() {
        let mut control = average_bucket("control", &[0.0, 0.0, 0.0]);
        control.count_missing = 3;
        let mut treatment = average_bucket("treatment", &[0.0, 0.0]);
        treatment.count_missing = 2;
        let mut split = average_bucket("treatment", &[0.0]);
        split.dimension = Some(crate::api::DimensionValue {
            dimension: "platform".into(),
            value: "ios".into(),
        });
        split.count_missing = 1;
        let input = |buckets: &[BucketSums]| {
            analyse(&AnalysisInput {
                buckets,
                control: "control",
                expected_variants: &[],
                multiple_variant_entities: 0,
            })
        };
        let analysis = input(&[control.clone(), treatment.clone(), split]);
        assert_eq!(analysis.entities_without_value, 5);
        let warning = analysis.no_values_warning().unwrap();
        assert!(
            warning.contains("none of the 5 exposed entities"),
            "{warning}"
        );

        treatment.count_missing = 1;
        let analysis = input(&[control, treatment]);
        assert_eq!(analysis.entities_without_value, 4);
        assert_eq!(analysis.no_values_warning(), None);
        assert_eq!(input(&[]).no_values_warning(), None);
    }

    #[test]
    fn missing_control_gives_no_comparison_and_expected_groups_count_as_zero() {
        let buckets = [average_bucket("a", &[1.0, 2.0])];
        let groups = vec!["a".to_string(), "b".to_string()];
        let analysis = analyse(&AnalysisInput {
            buckets: &buckets,
            control: "control",
            expected_variants: &groups,
            multiple_variant_entities: 0,
        });
        assert!(analysis.comparisons.is_empty());
        let srm = analysis.sample_ratio_mismatch.unwrap();
        assert_eq!(srm.counts["b"], 0);
        assert!(srm.p_value.unwrap() < 0.2);
    }

    /// A CUPED bucket from per-entity post values and pre values (None: missing, so
    /// the entity has no pair).
    fn cuped_bucket(variant: &str, rows: &[(Option<f64>, f64)]) -> BucketSums {
        let post: Vec<[f64; 1]> = rows.iter().map(|(_, y)| [*y]).collect();
        let pairs: Vec<[f64; 2]> = rows
            .iter()
            .filter_map(|(x, y)| x.map(|x| [x, *y]))
            .collect();
        BucketSums {
            variant: variant.into(),
            dimension: None,
            entities: rows.len() as i64,
            count_missing: 0,
            count_missing_rows: 0,
            values: BucketMoments::Average {
                post: Moments::from_observations(&post),
                cuped: Some(CupedSums {
                    moments: Moments::from_observations(&pairs),
                    count_missing: 0,
                    count_missing_rows: 0,
                }),
            },
        }
    }

    fn only_comparison(buckets: &[BucketSums]) -> Comparison {
        analyse(&AnalysisInput {
            buckets,
            control: "control",
            expected_variants: &[],
            multiple_variant_entities: 0,
        })
        .comparisons
        .remove(0)
    }

    #[test]
    fn cuped_without_pre_exposure_variation_is_the_plain_difference() {
        // No pre-exposure facts: every x is 0 (Sum replaces missing with 0).
        let control = [1.0, 2.0, 3.0, 4.0];
        let treatment = [2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let with_x = |ys: &[f64]| ys.iter().map(|y| (Some(0.0), *y)).collect::<Vec<_>>();
        let cuped = only_comparison(&[
            cuped_bucket("control", &with_x(&control)),
            cuped_bucket("treatment", &with_x(&treatment)),
        ]);
        let plain = only_comparison(&[
            average_bucket("control", &control),
            average_bucket("treatment", &treatment),
        ]);
        assert_eq!(cuped.theta, Some(0.0));
        let (a, b) = (cuped.absolute.unwrap(), plain.absolute.unwrap());
        assert!((a.difference - 2.0).abs() < 1e-12);
        assert!((a.standard_error.unwrap() - b.standard_error.unwrap()).abs() < 1e-12);
        assert!((a.p_value.unwrap() - b.p_value.unwrap()).abs() < 1e-12);

        // A constant x that is not 0 leaves the same: rounding does not make a theta.
        let with_x = |ys: &[f64]| ys.iter().map(|y| (Some(0.1), *y)).collect::<Vec<_>>();
        let cuped = only_comparison(&[
            cuped_bucket("control", &with_x(&control)),
            cuped_bucket("treatment", &with_x(&treatment)),
        ]);
        assert_eq!(cuped.theta, Some(0.0));
        assert!((cuped.absolute.unwrap().difference - 2.0).abs() < 1e-12);
    }

    #[test]
    fn cuped_with_no_pairs_in_a_group_falls_back_to_the_plain_comparison() {
        // Mean with no pre-exposure facts: x is missing and not replaced.
        let control = [1.0, 2.0, 3.0, 4.0];
        let treatment = [2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let without_x = |ys: &[f64]| ys.iter().map(|y| (None, *y)).collect::<Vec<_>>();
        let cuped = only_comparison(&[
            cuped_bucket("control", &without_x(&control)),
            cuped_bucket("treatment", &without_x(&treatment)),
        ]);
        let plain = only_comparison(&[
            average_bucket("control", &control),
            average_bucket("treatment", &treatment),
        ]);
        assert_eq!(cuped.theta, None);
        assert_eq!(cuped.absolute, plain.absolute);
        assert_eq!(cuped.relative, plain.relative);
        assert!(cuped.absolute.is_some());
    }

    #[test]
    fn constants_inexact_in_binary_leave_inference_out_too() {
        let comparison = only_comparison(&[
            average_bucket("control", &[1.0 / 3.0; 5]),
            average_bucket("treatment", &[2.0 / 3.0; 5]),
        ]);
        let absolute = comparison.absolute.unwrap();
        assert!((absolute.difference - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(absolute.standard_error, None, "not rounding noise");
        assert_eq!(absolute.p_value, None);
    }

    #[test]
    fn a_ratio_every_entity_shares_has_no_variance() {
        let rows: Vec<[f64; 2]> = [0.1, 0.3, 0.7, 1.1, 2.9]
            .iter()
            .map(|d| [0.3 * d, *d])
            .collect();
        let (ratio, variance) = ratio_and_variance(&Moments::from_observations(&rows)).unwrap();
        assert!((ratio - 0.3).abs() < 1e-15);
        assert_eq!(variance, Some(0.0));
    }

    #[test]
    fn a_ratios_variance_does_not_depend_on_the_scale_of_its_values() {
        let rows = [[1.0, 1.0], [3.0, 2.0], [2.0, 3.0], [5.0, 4.0]];
        let (ratio, variance) = ratio_and_variance(&Moments::from_observations(&rows)).unwrap();
        for scale in [1e-80, 1e80] {
            let scaled: Vec<[f64; 2]> = rows.iter().map(|[y, d]| [y * scale, d * scale]).collect();
            let (r, v) = ratio_and_variance(&Moments::from_observations(&scaled)).unwrap();
            assert!((r / ratio - 1.0).abs() < 1e-12, "{scale}");
            assert!(
                (v.unwrap() / variance.unwrap() - 1.0).abs() < 1e-9,
                "{scale}"
            );
        }
    }

    #[test]
    fn zero_variance_leaves_inference_out() {
        let buckets = [
            average_bucket("control", &[1.0, 1.0]),
            average_bucket("treatment", &[1.0, 1.0]),
        ];
        let analysis = analyse(&AnalysisInput {
            buckets: &buckets,
            control: "control",
            expected_variants: &[],
            multiple_variant_entities: 0,
        });
        let absolute = analysis.comparisons[0].absolute.as_ref().unwrap();
        assert_eq!(absolute.difference, 0.0);
        assert_eq!(absolute.p_value, None);
        assert_eq!(absolute.standard_error, None);
    }
}
