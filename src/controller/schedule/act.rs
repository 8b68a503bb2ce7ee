//! Carries out a schedule's decision: its own actions (create, cancel, mark and delete
//! runs; remove handled annotations) here, the shared ones through the executor.

use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy},
};
use serde_json::{Value, json};

use super::decide::{ScheduleAction, TakenName, taken_name};
use super::run::child_calculation;
use crate::api::{CANCEL_ANNOTATION, MetricCalculation, ScheduledMetricCalculation};
use crate::controller::plumbing::act::shared;
use crate::controller::{Context, ControllerError};
use crate::job_contract::owned_by;

/// Treats "already there" (409) or "already gone" (404) as done.
fn tolerate<T>(result: Result<T, kube::Error>, code: u16) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == code => Ok(()),
        Err(e) => Err(e),
    }
}

/// Carries out `actions`; `definition` is the fingerprint of what a run computes now
/// (written on each new run).
pub async fn act(
    ctx: &Context,
    schedule: &ScheduledMetricCalculation,
    definition: &Result<String, String>,
    actions: Vec<ScheduleAction>,
) -> Result<(), ControllerError> {
    let namespace = schedule.namespace().ok_or(ControllerError::NoNamespace)?;
    let name = schedule.name_any();
    let calculations: Api<MetricCalculation> = Api::namespaced(ctx.client.clone(), &namespace);
    let schedules: Api<ScheduledMetricCalculation> =
        Api::namespaced(ctx.client.clone(), &namespace);
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    for action in actions {
        let Some(action) = shared(ctx, schedule, action).await? else {
            continue;
        };
        match action {
            ScheduleAction::CreateRun(run) => {
                let calculation = definition
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|definition| child_calculation(schedule, &run, definition))
                    .map_err(|reason| {
                        ControllerError::RunNotBuilt(format!("run {}: {reason}", run.name))
                    })?;
                match calculations
                    .create(&PostParams::default(), &calculation)
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let existing = calculations.get_opt(&run.name).await?;
                        let owned =
                            existing.map(|c| schedule.uid().is_some_and(|uid| owned_by(&c, &uid)));
                        match taken_name(&run, owned) {
                            TakenName::Adopted => {}
                            TakenName::Taken(note) => {
                                ctx.events
                                    .publish(schedule, true, "RunNameTaken", &note)
                                    .await;
                                return Err(ControllerError::NameTaken(note));
                            }
                            TakenName::Gone => return Err(kube::Error::Api(e).into()),
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            ScheduleAction::MarkSuperseded { name, by } => {
                let patch = json!({ "status": { "supersededBy": by } });
                let result = calculations
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await;
                tolerate(result, 404)?;
            }
            ScheduleAction::CancelRun(name) => {
                let patch = json!({ "metadata": { "annotations": { CANCEL_ANNOTATION: "true" } } });
                let result = calculations
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await;
                tolerate(result, 404)?;
            }
            ScheduleAction::DeleteRun(name) => {
                tolerate(calculations.delete(&name, &background).await, 404)?;
            }
            ScheduleAction::RemoveAnnotations(names) => {
                let annotations: serde_json::Map<String, Value> =
                    names.iter().map(|n| (n.to_string(), Value::Null)).collect();
                let patch = json!({ "metadata": { "annotations": annotations } });
                schedules
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
            }
            // Carried out as shared actions.
            ScheduleAction::SetStatus(_) | ScheduleAction::Event { .. } => {}
        }
    }
    Ok(())
}
