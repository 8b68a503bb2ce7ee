use std::ops::Add;

/// Machine epsilons a difference of sums may carry per √n of the sums it comes from.
const ROUNDING_UNITS: f64 = 8.0;

/// `value`, or 0 when it is within `rounding` of zero. A variance that the sums make
/// slightly negative or slightly positive where the data do not vary at all is 0,
/// not noise that would give a standard error near zero and a p-value of 0.
pub fn beyond_rounding(value: f64, rounding: f64) -> f64 {
    if value <= rounding { 0.0 } else { value }
}

/// Sufficient statistics of K variables over n entities: Σv_i and Σv_i·v_j.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments<const K: usize> {
    pub n: i64,
    pub sums: [f64; K],
    pub products: [[f64; K]; K],
}

impl<const K: usize> Default for Moments<K> {
    fn default() -> Self {
        Self {
            n: 0,
            sums: [0.0; K],
            products: [[0.0; K]; K],
        }
    }
}

impl<const K: usize> Moments<K> {
    /// Moments from n, the sums and the upper triangle of the products
    /// (row by row: 00, 01, …, 0K, 11, 12, …), the order SQL results use.
    // Filling a symmetric matrix indexes it by (i, j) and (j, i): a range loop is clearest.
    #[allow(clippy::needless_range_loop)]
    pub fn from_upper_triangle(n: i64, sums: [f64; K], upper: &[f64]) -> Self {
        let mut products = [[0.0; K]; K];
        let mut next = upper.iter().copied();
        for i in 0..K {
            for j in i..K {
                let value = next.next().unwrap_or(0.0);
                products[i][j] = value;
                products[j][i] = value;
            }
        }
        Self { n, sums, products }
    }

    /// Moments of individual observations; for tests and small in-memory data.
    pub fn from_observations(rows: &[[f64; K]]) -> Self {
        rows.iter().fold(Self::default(), |acc, row| {
            let mut one = Self {
                n: 1,
                sums: *row,
                ..Self::default()
            };
            for i in 0..K {
                for j in 0..K {
                    one.products[i][j] = row[i] * row[j];
                }
            }
            acc + one
        })
    }

    pub fn sum(&self, i: usize) -> f64 {
        self.sums[i]
    }

    pub fn sum_of_products(&self, i: usize, j: usize) -> f64 {
        self.products[i][j]
    }

    pub fn mean(&self, i: usize) -> Option<f64> {
        (self.n > 0).then(|| self.sums[i] / self.n as f64)
    }

    /// Sample covariance (n − 1); absent below two entities.
    pub fn covariance(&self, i: usize, j: usize) -> Option<f64> {
        (self.n > 1).then(|| {
            let n = self.n as f64;
            (self.products[i][j] - self.sums[i] * self.sums[j] / n) / (n - 1.0)
        })
    }

    /// Sample variance (n − 1), never negative; absent below two entities.
    pub fn variance(&self, i: usize) -> Option<f64> {
        self.covariance(i, i)
            .map(|variance| beyond_rounding(variance, self.rounding(i, i)))
    }

    /// A bound on the rounding error of [`Self::covariance`]`(i, j)`: Σv_i·v_j −
    /// Σv_i·Σv_j/n keeps the absolute error of the sums, about ε·√n of the sums of
    /// squares, however small the difference.
    pub fn rounding(&self, i: usize, j: usize) -> f64 {
        let n = self.n as f64;
        let magnitude = self.products[i][i].abs().sqrt() * self.products[j][j].abs().sqrt();
        ROUNDING_UNITS * f64::EPSILON * n.sqrt() * magnitude / (n - 1.0).max(1.0)
    }
}

impl<const K: usize> Add for Moments<K> {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        let mut out = self;
        out.n += other.n;
        for i in 0..K {
            out.sums[i] += other.sums[i];
            for j in 0..K {
                out.products[i][j] += other.products[i][j];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_figures_match_direct_computation() {
        let m = Moments::from_observations(&[[1.0, 2.0], [2.0, 1.0], [4.0, 7.0], [5.0, 2.0]]);
        assert_eq!(m.n, 4);
        assert_eq!(m.mean(0), Some(3.0));
        // x: 1, 2, 4, 5 → deviations −2, −1, 1, 2 → Σd² = 10 → var 10/3.
        assert!((m.variance(0).unwrap() - 10.0 / 3.0).abs() < 1e-12);
        // y: mean 3, deviations −1, −2, 4, −1 → Σdx·dy = 2 + 2 + 4 − 2 = 6 → cov 2.
        assert!((m.covariance(0, 1).unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(m.covariance(0, 1), m.covariance(1, 0));
    }

    #[test]
    fn moments_add_like_concatenated_data() {
        let a = Moments::from_observations(&[[1.0], [3.0]]);
        let b = Moments::from_observations(&[[8.0]]);
        let all = Moments::from_observations(&[[1.0], [3.0], [8.0]]);
        assert_eq!(a + b, all);
    }

    #[test]
    fn undefined_figures_are_absent() {
        let empty = Moments::<1>::default();
        assert_eq!(empty.mean(0), None);
        let one = Moments::from_observations(&[[2.0]]);
        assert_eq!(one.mean(0), Some(2.0));
        assert_eq!(one.variance(0), None);
    }

    #[test]
    fn a_constant_that_is_not_exact_in_binary_has_no_variance() {
        for (value, n) in [(1.0 / 3.0, 5), (0.1, 3), (0.2, 1000), (2.0 / 3.0, 5)] {
            let m = Moments::from_observations(&vec![[value]; n]);
            assert_eq!(m.variance(0), Some(0.0), "{value} × {n}");
        }
        // Real spread, however small against the mean, stays.
        let m = Moments::from_observations(&[[1000.0], [1000.01]]);
        assert!(m.variance(0).unwrap() > 0.0);
        let m = Moments::from_observations(&[[1e6], [1e6 + 1.0], [1e6], [1e6 + 1.0]]);
        assert!((m.variance(0).unwrap() - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn upper_triangle_layout() {
        let m =
            Moments::<3>::from_upper_triangle(2, [1.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(m.products[0], [1.0, 2.0, 3.0]);
        assert_eq!(m.products[1], [2.0, 4.0, 5.0]);
        assert_eq!(m.products[2], [3.0, 5.0, 6.0]);
    }
}
