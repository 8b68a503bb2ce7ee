//! Tally: experiment metrics computed in the warehouse, summarised in Kubernetes status.
//!
//! `api` (the CRDs) → `plan` (a calculation compiled to SQL, pure) → `engine` (runs
//! SQL) → `stats` (summary statistics and analysis, pure); `execute` ties plan, engine
//! and stats together for the `worker` (a calculation Job's entrypoint) and `tally
//! run`. `controller` runs calculations as Jobs and reaches the worker only through
//! `job_contract`. `cli` is the command line.

pub mod api;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod execute;
pub mod job_contract;
pub mod plan;
pub mod stats;
pub mod worker;
