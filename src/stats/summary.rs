use crate::api::{
    AverageSummaryStats, AverageVarianceReductionStats, DimensionValue, MetricBucketStats,
    RatioSummaryStats, RatioVarianceReductionStats, SummaryStats,
};

use super::Moments;

/// What a bucket measures: one value per entity, or a numerator and a denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeasureShape {
    Average,
    Ratio,
}

/// The additive sums of one bucket (a variant, overall or for one dimension value),
/// as the warehouse returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketSums {
    pub variant: String,
    pub dimension: Option<DimensionValue>,
    /// Entities kept in the bucket, whether or not they have a value.
    pub entities: i64,
    /// Entities with no value before null handling (either side for ratios).
    pub count_missing: i64,
    /// Fact rows in the window whose measurement was null.
    pub count_missing_rows: i64,
    pub values: BucketMoments,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BucketMoments {
    /// Over the entities with a value: [y].
    Average {
        post: Moments<1>,
        cuped: Option<CupedSums<2>>,
    },
    /// Over the entities with both values: [y, d].
    Ratio {
        post: Moments<2>,
        cuped: Option<CupedSums<4>>,
    },
}

/// Pre-exposure sums over the entities with both pre and post values: [x, y] for an
/// average, [a, b, y, d] for a ratio (a, b the pre numerator and denominator).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CupedSums<const K: usize> {
    pub moments: Moments<K>,
    pub count_missing: i64,
    pub count_missing_rows: i64,
}

/// The status form of one bucket.
pub fn summarise(bucket: &BucketSums) -> MetricBucketStats {
    let summary_stats = match &bucket.values {
        BucketMoments::Average { post, cuped } => SummaryStats {
            average_summary_stats: Some(AverageSummaryStats {
                count: post.n,
                count_missing: bucket.count_missing,
                count_missing_rows: bucket.count_missing_rows,
                sum: post.sum(0),
                sum_of_squares: post.sum_of_products(0, 0),
                mean: post.mean(0),
                variance: post.variance(0),
                variance_reduction_stats: cuped.as_ref().map(average_cuped_stats),
            }),
            ratio_summary_stats: None,
        },
        BucketMoments::Ratio { post, cuped } => SummaryStats {
            average_summary_stats: None,
            ratio_summary_stats: Some(RatioSummaryStats {
                count: post.n,
                count_missing: bucket.count_missing,
                count_missing_rows: bucket.count_missing_rows,
                numerator_sum: post.sum(0),
                numerator_sum_of_squares: post.sum_of_products(0, 0),
                denominator_sum: post.sum(1),
                denominator_sum_of_squares: post.sum_of_products(1, 1),
                sum_of_products: post.sum_of_products(0, 1),
                numerator_mean: post.mean(0),
                numerator_variance: post.variance(0),
                denominator_mean: post.mean(1),
                denominator_variance: post.variance(1),
                numerator_denominator_covariance: post.covariance(0, 1),
                variance_reduction_stats: cuped.as_ref().map(ratio_cuped_stats),
            }),
        },
    };
    MetricBucketStats {
        variant: bucket.variant.clone(),
        dimensions: bucket.dimension.iter().cloned().collect(),
        summary_stats,
    }
}

fn average_cuped_stats(cuped: &CupedSums<2>) -> AverageVarianceReductionStats {
    const X: usize = 0;
    const Y: usize = 1;
    let m = &cuped.moments;
    AverageVarianceReductionStats {
        count: m.n,
        count_missing: cuped.count_missing,
        count_missing_rows: cuped.count_missing_rows,
        post_count: m.n,
        sum: m.sum(X),
        post_sum: m.sum(Y),
        sum_of_squares: m.sum_of_products(X, X),
        sum_of_products: m.sum_of_products(X, Y),
        mean: m.mean(X),
        variance: m.variance(X),
        covariance: m.covariance(X, Y),
    }
}

fn ratio_cuped_stats(cuped: &CupedSums<4>) -> RatioVarianceReductionStats {
    const A: usize = 0;
    const B: usize = 1;
    const Y: usize = 2;
    const D: usize = 3;
    let m = &cuped.moments;
    RatioVarianceReductionStats {
        count: m.n,
        count_missing: cuped.count_missing,
        count_missing_rows: cuped.count_missing_rows,
        numerator_sum: m.sum(A),
        post_numerator_sum: m.sum(Y),
        denominator_sum: m.sum(B),
        post_denominator_sum: m.sum(D),
        numerator_sum_of_squares: m.sum_of_products(A, A),
        denominator_sum_of_squares: m.sum_of_products(B, B),
        sum_of_products: m.sum_of_products(A, B),
        numerator_numerator_sum_of_products: m.sum_of_products(A, Y),
        numerator_denominator_sum_of_products: m.sum_of_products(A, D),
        denominator_numerator_sum_of_products: m.sum_of_products(B, Y),
        denominator_denominator_sum_of_products: m.sum_of_products(B, D),
        numerator_mean: m.mean(A),
        numerator_variance: m.variance(A),
        denominator_mean: m.mean(B),
        denominator_variance: m.variance(B),
        numerator_denominator_covariance: m.covariance(A, B),
        pre_numerator_post_numerator_covariance: m.covariance(A, Y),
        pre_numerator_post_denominator_covariance: m.covariance(A, D),
        pre_denominator_post_numerator_covariance: m.covariance(B, Y),
        pre_denominator_post_denominator_covariance: m.covariance(B, D),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn average_bucket_with_cuped() {
        let bucket = BucketSums {
            variant: "control".into(),
            dimension: None,
            entities: 4,
            count_missing: 1,
            count_missing_rows: 2,
            values: BucketMoments::Average {
                post: Moments::from_observations(&[[1.0], [2.0], [6.0]]),
                cuped: Some(CupedSums {
                    moments: Moments::from_observations(&[[0.0, 1.0], [3.0, 6.0]]),
                    count_missing: 1,
                    count_missing_rows: 0,
                }),
            },
        };
        let stats = summarise(&bucket)
            .summary_stats
            .average_summary_stats
            .unwrap();
        assert_eq!(
            (stats.count, stats.count_missing, stats.count_missing_rows),
            (3, 1, 2)
        );
        assert_eq!(
            (stats.sum, stats.sum_of_squares, stats.mean),
            (9.0, 41.0, Some(3.0))
        );
        assert_eq!(stats.variance, Some(7.0));
        let vr = stats.variance_reduction_stats.unwrap();
        assert_eq!(
            (vr.count, vr.post_count, vr.sum, vr.post_sum),
            (2, 2, 3.0, 7.0)
        );
        assert_eq!((vr.sum_of_squares, vr.sum_of_products), (9.0, 18.0));
        assert_eq!(
            (vr.mean, vr.variance, vr.covariance),
            (Some(1.5), Some(4.5), Some(7.5))
        );
    }

    #[test]
    fn ratio_cuped_names_follow_the_api() {
        // One entity per row: a, b, y, d.
        let rows = [
            [1.0, 2.0, 3.0, 4.0],
            [2.0, 5.0, 1.0, 1.0],
            [0.0, 1.0, 2.0, 2.0],
        ];
        let bucket = BucketSums {
            variant: "t".into(),
            dimension: Some(DimensionValue {
                dimension: "country".into(),
                value: "SE".into(),
            }),
            entities: 3,
            count_missing: 0,
            count_missing_rows: 0,
            values: BucketMoments::Ratio {
                post: Moments::from_observations(&rows.map(|r| [r[2], r[3]])),
                cuped: Some(CupedSums {
                    moments: Moments::from_observations(&rows),
                    count_missing: 0,
                    count_missing_rows: 0,
                }),
            },
        };
        let out = summarise(&bucket);
        assert_eq!(out.dimensions.len(), 1);
        let ratio = out.summary_stats.ratio_summary_stats.unwrap();
        assert_eq!(
            (
                ratio.numerator_sum,
                ratio.denominator_sum,
                ratio.sum_of_products
            ),
            (6.0, 7.0, 17.0)
        );
        let vr = ratio.variance_reduction_stats.unwrap();
        assert_eq!((vr.numerator_sum, vr.denominator_sum), (3.0, 8.0));
        assert_eq!((vr.post_numerator_sum, vr.post_denominator_sum), (6.0, 7.0));
        assert_eq!(vr.sum_of_products, 12.0); // Σab = 2 + 10 + 0
        assert_eq!(vr.numerator_numerator_sum_of_products, 5.0); // Σay = 3 + 2 + 0
        assert_eq!(vr.numerator_denominator_sum_of_products, 6.0); // Σad = 4 + 2 + 0
        assert_eq!(vr.denominator_numerator_sum_of_products, 13.0); // Σby = 6 + 5 + 2
        assert_eq!(vr.denominator_denominator_sum_of_products, 15.0); // Σbd = 8 + 5 + 2
    }
}
