//! The few distribution functions the analysis needs.

/// The 97.5% quantile of the standard normal: half-width of a 95% interval.
pub const Z_975: f64 = 1.959_963_984_540_054;

/// Two-sided p-value of a z statistic.
pub fn normal_two_sided_p(z: f64) -> f64 {
    libm::erfc(z.abs() / std::f64::consts::SQRT_2)
}

/// P(X ≥ x) for a chi-square variable with `dof` degrees of freedom: the regularised
/// upper incomplete gamma function Q(dof/2, x/2).
pub fn chi_square_survival(x: f64, dof: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    regularized_upper_gamma(dof / 2.0, x / 2.0)
}

/// Q(a, x): by its power series below x < a + 1, by Lentz's continued fraction above.
fn regularized_upper_gamma(a: f64, x: f64) -> f64 {
    let log_prefactor = a * x.ln() - x - libm::lgamma(a);
    if x < a + 1.0 {
        let mut term = 1.0 / a;
        let mut sum = term;
        let mut denominator = a;
        for _ in 0..10_000 {
            denominator += 1.0;
            term *= x / denominator;
            sum += term;
            if term.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        (1.0 - sum * log_prefactor.exp()).clamp(0.0, 1.0)
    } else {
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (h * log_prefactor.exp()).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 + 1e-10 * b.abs()
    }

    #[test]
    fn normal_p_values() {
        assert!(close(normal_two_sided_p(0.0), 1.0));
        assert!(close(normal_two_sided_p(Z_975), 0.05));
        assert!(close(normal_two_sided_p(-Z_975), 0.05));
        // 2·(1 − Φ(3)), scipy: 0.0026997960632601866
        assert!(close(normal_two_sided_p(3.0), 0.002_699_796_063_260_186_6));
    }

    #[test]
    fn chi_square_against_closed_forms() {
        // dof 2: survival is exp(−x/2).
        for x in [0.1, 1.0, 5.0, 30.0] {
            assert!(
                close(chi_square_survival(x, 2.0), (-x / 2.0f64).exp()),
                "x={x}"
            );
        }
        // dof 1: survival is erfc(√(x/2)).
        for x in [0.01, 0.5, 2.0, 9.0] {
            let exact = libm::erfc((x / 2.0f64).sqrt());
            assert!(close(chi_square_survival(x, 1.0), exact), "x={x}");
        }
        assert_eq!(chi_square_survival(0.0, 3.0), 1.0);
    }
}
