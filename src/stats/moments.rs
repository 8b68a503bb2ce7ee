use std::ops::Add;

/// Machine epsilons a difference of sums may carry per √n of the sums it comes from.
const ROUNDING_UNITS: f64 = 8.0;

/// `value`, or 0 when it is within `rounding` of zero. A variance that the sums make
/// slightly negative or slightly positive where the data do not vary at all is 0,
/// not noise that would give a standard error near zero and a p-value of 0.
pub fn beyond_rounding(value: f64, rounding: f64) -> f64 {
    if value <= rounding { 0.0 } else { value }
}

/// Sufficient statistics of K variables over n entities, taken around a shift c (a
/// pivot near the means): Σ(v_i − c_i) and Σ(v_i − c_i)(v_j − c_j).
///
/// Second moments come from the shifted sums, so they keep their precision however
/// far the mean is from zero: Σ(v − c)² − (Σ(v − c))²/n cancels only as much as the
/// shift is away from the mean, where Σv² − (Σv)²/n loses every digit of
/// mean²/variance. The raw sums Σv_i and Σv_i·v_j are reconstructed from the shifted
/// ones. Moments around one shift add as they are; [`Add`] moves the right operand to
/// the left one's shift first when they differ.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments<const K: usize> {
    pub n: i64,
    /// c_i, the value every sum is taken around.
    pub shift: [f64; K],
    /// Σ(v_i − c_i).
    pub shifted_sums: [f64; K],
    /// Σ(v_i − c_i)(v_j − c_j), symmetric.
    pub shifted_products: [[f64; K]; K],
}

impl<const K: usize> Default for Moments<K> {
    fn default() -> Self {
        Self {
            n: 0,
            shift: [0.0; K],
            shifted_sums: [0.0; K],
            shifted_products: [[0.0; K]; K],
        }
    }
}

impl<const K: usize> Moments<K> {
    /// Moments from n, the shift, the shifted sums and the upper triangle of the
    /// shifted products (row by row: 00, 01, …, 0K, 11, 12, …), the order SQL results
    /// use.
    // Filling a symmetric matrix indexes it by (i, j) and (j, i): a range loop is clearest.
    #[allow(clippy::needless_range_loop)]
    pub fn from_upper_triangle(n: i64, shift: [f64; K], sums: [f64; K], upper: &[f64]) -> Self {
        let mut products = [[0.0; K]; K];
        let mut next = upper.iter().copied();
        for i in 0..K {
            for j in i..K {
                let value = next.next().unwrap_or(0.0);
                products[i][j] = value;
                products[j][i] = value;
            }
        }
        Self {
            n,
            shift,
            shifted_sums: sums,
            shifted_products: products,
        }
    }

    /// Moments of individual observations around `shift`; for tests and small
    /// in-memory data.
    // Filling a symmetric matrix indexes it by (i, j): a range loop is clearest.
    #[allow(clippy::needless_range_loop)]
    pub fn around(shift: [f64; K], rows: &[[f64; K]]) -> Self {
        let mut out = Self {
            shift,
            ..Self::default()
        };
        for row in rows {
            out.n += 1;
            for i in 0..K {
                let di = row[i] - shift[i];
                out.shifted_sums[i] += di;
                for j in 0..K {
                    out.shifted_products[i][j] += di * (row[j] - shift[j]);
                }
            }
        }
        out
    }

    /// Moments of individual observations around the shift the SQL takes (sql.rs,
    /// `moments`): per variable its mean, rounded to an integer when every value is
    /// one. Integer data then keep exact integer sums, and the shift is within one
    /// standard deviation of the mean (every integer value is at least as far from the
    /// mean as the nearest integer is), so the variance loses at most a factor 2 of
    /// precision to it. For tests and small in-memory data.
    pub fn from_observations(rows: &[[f64; K]]) -> Self {
        let shift = std::array::from_fn(|i| {
            let mean = rows.iter().map(|row| row[i]).sum::<f64>() / rows.len().max(1) as f64;
            if rows.iter().all(|row| row[i] == row[i].round()) {
                mean.round()
            } else {
                mean
            }
        });
        Self::around(shift, rows)
    }

    /// The same moments around another shift. Exact in real arithmetic; in floating
    /// point as precise as the new shift is close to the mean.
    // Moving a symmetric matrix indexes it by (i, j): a range loop is clearest.
    #[allow(clippy::needless_range_loop)]
    pub fn recentred(&self, shift: [f64; K]) -> Self {
        if shift == self.shift {
            return *self;
        }
        let n = self.n as f64;
        // v − c' = (v − c) + δ with δ = c − c'.
        let delta: [f64; K] = std::array::from_fn(|i| self.shift[i] - shift[i]);
        let mut out = Self {
            n: self.n,
            shift,
            ..Self::default()
        };
        for i in 0..K {
            out.shifted_sums[i] = self.shifted_sums[i] + n * delta[i];
            for j in 0..K {
                out.shifted_products[i][j] = self.shifted_products[i][j]
                    + delta[j] * self.shifted_sums[i]
                    + delta[i] * self.shifted_sums[j]
                    + n * delta[i] * delta[j];
            }
        }
        out
    }

    /// Σv_i, reconstructed: Σ(v_i − c_i) + n·c_i.
    pub fn sum(&self, i: usize) -> f64 {
        self.shifted_sums[i] + self.n as f64 * self.shift[i]
    }

    /// Σv_i·v_j, reconstructed: Σ(v_i − c_i)(v_j − c_j) + c_j·Σ(v_i − c_i) +
    /// c_i·Σ(v_j − c_j) + n·c_i·c_j.
    pub fn sum_of_products(&self, i: usize, j: usize) -> f64 {
        let (ci, cj) = (self.shift[i], self.shift[j]);
        self.shifted_products[i][j]
            + cj * self.shifted_sums[i]
            + ci * self.shifted_sums[j]
            + self.n as f64 * ci * cj
    }

    pub fn mean(&self, i: usize) -> Option<f64> {
        (self.n > 0).then(|| self.shift[i] + self.shifted_sums[i] / self.n as f64)
    }

    /// mean_i of self − mean_i of other, from the shifted sums: exact to rounding of
    /// the difference itself, not of the means (which are far larger when the mean is
    /// far from zero). Absent when either has no entity.
    pub fn mean_difference(&self, other: &Self, i: usize) -> Option<f64> {
        (self.n > 0 && other.n > 0).then(|| {
            (self.shift[i] - other.shift[i])
                + (self.shifted_sums[i] / self.n as f64 - other.shifted_sums[i] / other.n as f64)
        })
    }

    /// Σv_i/Σv_j of self − that of other, from the shifted sums. With per-entity
    /// means μ = c + m (m the shifted mean) and one shift for both:
    /// μi_t/μj_t − μi_c/μj_c = (ci·(mj_c − mj_t) + cj·(mi_t − mi_c) + mi_t·mj_c −
    /// mi_c·mj_t) / (μj_t·μj_c), where the c_i·c_j terms, which hold every digit the
    /// difference would lose, cancel exactly.
    pub fn ratio_difference(&self, other: &Self, i: usize, j: usize) -> Option<f64> {
        if self.n == 0 || other.n == 0 {
            return None;
        }
        let other = other.recentred(self.shift);
        let shifted_mean = |m: &Self, k: usize| m.shifted_sums[k] / m.n as f64;
        let (mi_t, mj_t) = (shifted_mean(self, i), shifted_mean(self, j));
        let (mi_c, mj_c) = (shifted_mean(&other, i), shifted_mean(&other, j));
        let (ci, cj) = (self.shift[i], self.shift[j]);
        let numerator = ci * (mj_c - mj_t) + cj * (mi_t - mi_c) + (mi_t * mj_c - mi_c * mj_t);
        Some(numerator / ((cj + mj_t) * (cj + mj_c)))
    }

    /// Sample covariance (n − 1), from the shifted sums; absent below two entities.
    pub fn covariance(&self, i: usize, j: usize) -> Option<f64> {
        (self.n > 1).then(|| {
            let n = self.n as f64;
            let (p, si, sj) = (
                self.shifted_products[i][j],
                self.shifted_sums[i],
                self.shifted_sums[j],
            );
            (p - si * sj / n) / (n - 1.0)
        })
    }

    /// Sample variance (n − 1), never negative; absent below two entities.
    pub fn variance(&self, i: usize) -> Option<f64> {
        self.covariance(i, i)
            .map(|variance| beyond_rounding(variance, self.rounding(i, i)))
    }

    /// The mean square of v_i − c_i: the scale [`Self::covariance`]`(i, i)` is
    /// computed at, and so the scale of its rounding.
    pub fn shifted_mean_square(&self, i: usize) -> f64 {
        self.shifted_products[i][i] / (self.n as f64).max(1.0)
    }

    /// A bound on the rounding error of [`Self::covariance`]`(i, j)`:
    /// Σ(v_i − c_i)(v_j − c_j) − Σ(v_i − c_i)·Σ(v_j − c_j)/n keeps the absolute error
    /// of the shifted sums, about ε·√n of the shifted sums of squares, however small
    /// the difference.
    pub fn rounding(&self, i: usize, j: usize) -> f64 {
        let n = self.n as f64;
        let magnitude =
            self.shifted_products[i][i].abs().sqrt() * self.shifted_products[j][j].abs().sqrt();
        ROUNDING_UNITS * f64::EPSILON * n.sqrt() * magnitude / (n - 1.0).max(1.0)
    }
}

impl<const K: usize> Add for Moments<K> {
    type Output = Self;

    /// The moments of both sets of entities, around the shift of `self` (of `other`
    /// when `self` is empty). Buckets of one calculation share their shift, so their
    /// sums add as they are.
    fn add(self, other: Self) -> Self {
        if self.n == 0 {
            return other;
        }
        let other = other.recentred(self.shift);
        let mut out = self;
        out.n += other.n;
        for i in 0..K {
            out.shifted_sums[i] += other.shifted_sums[i];
            for j in 0..K {
                out.shifted_products[i][j] += other.shifted_products[i][j];
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
        let a = Moments::around([4.0], &[[1.0], [3.0]]);
        let b = Moments::around([4.0], &[[8.0]]);
        let all = Moments::around([4.0], &[[1.0], [3.0], [8.0]]);
        assert_eq!(a + b, all);
        // Around different shifts, the right operand moves to the left one's.
        let (a, b) = (
            Moments::from_observations(&[[1.0], [3.0]]),
            Moments::from_observations(&[[8.0]]),
        );
        assert_eq!((a + b).shift, a.shift);
        assert_eq!(a + b, Moments::around(a.shift, &[[1.0], [3.0], [8.0]]));
        assert_eq!(Moments::default() + b, b);
    }

    #[test]
    fn raw_sums_are_reconstructed_from_the_shifted_ones() {
        let rows = [[1.0, 2.0], [2.0, 1.0], [4.0, 7.0], [5.0, 2.0]];
        for shift in [[0.0, 0.0], [3.0, 3.0], [-7.5, 100.0]] {
            let m = Moments::around(shift, &rows);
            assert_eq!((m.sum(0), m.sum(1)), (12.0, 12.0), "{shift:?}");
            assert_eq!(m.sum_of_products(0, 0), 46.0, "{shift:?}");
            assert_eq!(m.sum_of_products(1, 1), 58.0, "{shift:?}");
            assert_eq!(m.sum_of_products(0, 1), 42.0, "{shift:?}");
            assert_eq!(m.sum_of_products(1, 0), 42.0, "{shift:?}");
            assert_eq!(m.mean(1), Some(3.0), "{shift:?}");
            assert!(
                (m.covariance(0, 1).unwrap() - 2.0).abs() < 1e-12,
                "{shift:?}"
            );
            let back = m.recentred([0.0, 0.0]);
            assert_eq!(back.shifted_sums, [12.0, 12.0]);
            assert_eq!(back.shifted_products, [[46.0, 42.0], [42.0, 58.0]]);
        }
    }

    /// The sample variance of small integers k_i added to a mean, computed exactly:
    /// Σ(k − k̄)² over n − 1 with k̄ rational.
    fn exact_variance(ks: &[i64]) -> f64 {
        let n = ks.len() as i128;
        let sum: i128 = ks.iter().map(|&k| k as i128).sum();
        let squares: i128 = ks.iter().map(|&k| (k as i128).pow(2)).sum();
        (n * squares - sum * sum) as f64 / (n * (n - 1)) as f64
    }

    #[test]
    fn second_moments_stay_exact_far_from_zero() {
        // Integers in eighths (exact in binary) on a mean up to 10¹² times the spread.
        let ks: Vec<i64> = (0..1000).map(|i| (i * 7919) % 23 - 11).collect();
        let exact = exact_variance(&ks) / 64.0;
        for mean in [0.0, 1e4, 1e8, 1e12] {
            let rows: Vec<[f64; 2]> = ks
                .iter()
                .map(|&k| [mean + k as f64 / 8.0, mean - k as f64 / 8.0])
                .collect();
            let m = Moments::from_observations(&rows);
            let variance = m.variance(0).unwrap();
            assert!((variance / exact - 1.0).abs() < 1e-12, "{mean}: {variance}");
            let covariance = m.covariance(0, 1).unwrap();
            assert!(
                (covariance / exact + 1.0).abs() < 1e-12,
                "{mean}: {covariance}"
            );
            // A shift one spread away from the mean costs nothing either.
            let off = Moments::around([mean + 3.0, mean], &rows);
            assert!(
                (off.variance(0).unwrap() / exact - 1.0).abs() < 1e-12,
                "{mean}"
            );
        }
    }

    #[test]
    fn differences_of_means_and_ratios_keep_the_digits_the_means_round_away() {
        // Two groups on a mean of 10⁸ whose means differ by 2⁻¹⁰ (exact in binary),
        // less than a hundredth of the last place of 10⁸·n.
        let mean = 1e8;
        let c: Vec<[f64; 2]> = (0..100)
            .map(|i| [mean + (i % 5) as f64, mean + (i % 3) as f64])
            .collect();
        let t: Vec<[f64; 2]> = c.iter().map(|[y, d]| [y + 1.0 / 1024.0, *d]).collect();
        let shift = [mean, mean];
        let (mc, mt) = (Moments::around(shift, &c), Moments::around(shift, &t));
        assert_eq!(mt.mean_difference(&mc, 0), Some(1.0 / 1024.0));
        assert_eq!(mt.mean_difference(&mc, 1), Some(0.0));
        // Σy_t/Σd − Σy_c/Σd = 2⁻¹⁰/mean_d, with Σd shared.
        let mean_d = mc.mean(1).unwrap();
        let difference = mt.ratio_difference(&mc, 0, 1).unwrap();
        assert!(
            (difference / (1.0 / 1024.0 / mean_d) - 1.0).abs() < 1e-12,
            "{difference}"
        );
        // Around different shifts as well.
        let other = Moments::around([mean + 1.0, mean - 1.0], &c);
        assert!((mt.mean_difference(&other, 0).unwrap() * 1024.0 - 1.0).abs() < 1e-9);
        let difference = mt.ratio_difference(&other, 0, 1).unwrap();
        assert!((difference / (1.0 / 1024.0 / mean_d) - 1.0).abs() < 1e-9);
        assert_eq!(Moments::<2>::default().mean_difference(&mc, 0), None);
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
        let m = Moments::<3>::from_upper_triangle(
            2,
            [0.5, 0.0, 0.0],
            [1.0, 2.0, 3.0],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        );
        assert_eq!(m.shift, [0.5, 0.0, 0.0]);
        assert_eq!(m.shifted_sums, [1.0, 2.0, 3.0]);
        assert_eq!(m.shifted_products[0], [1.0, 2.0, 3.0]);
        assert_eq!(m.shifted_products[1], [2.0, 4.0, 5.0]);
        assert_eq!(m.shifted_products[2], [3.0, 5.0, 6.0]);
    }
}
