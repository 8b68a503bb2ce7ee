//! Tally: experiment metrics computed in the warehouse, summarised in Kubernetes status.

pub mod annotate;
pub mod api;
pub mod bench;
pub mod cli;
pub mod controller;
pub mod engine;
pub mod execute;
pub mod job_contract;
pub mod manifest;
pub mod plan;
pub mod schedule;
pub mod stats;
pub mod worker;
pub mod yaml;
