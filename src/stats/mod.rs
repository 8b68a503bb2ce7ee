//! Summary statistics and the analysis built on them (pure).
//!
//! Everything starts from additive sufficient statistics ([`Moments`]): sums in,
//! derived figures out, each formula in one place. Slices and increments combine by
//! adding moments. The sums are taken around a shift near the mean, so second moments
//! keep their precision when the mean is far from zero (README, "Precision of the
//! statistics").

mod analysis;
mod distribution;
mod moments;
pub mod summary;

pub use analysis::{AnalysisInput, analyse};
pub use distribution::{Z_975, chi_square_survival, normal_two_sided_p};
pub use moments::Moments;
pub use summary::{BucketMoments, BucketSums, CupedSums, MeasureShape, summarise};
