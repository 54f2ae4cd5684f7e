//! Commands on triggers, applied inside the state's transaction. A trigger
//! is a small record in the `access` tree under `trigger/{tenant}/{name}`
//! (so snapshots carry it, and removing a tenant removes its triggers).

use sled::transaction::ConflictableTransactionResult;
use wasmgrid_api::Trigger;

use super::model::*;
use super::{Tx, abort};

/// Applies a trigger command.
pub(super) fn apply(tx: &Tx<'_>, command: &Command) -> ConflictableTransactionResult<Result<Applied>, StateError> {
    let Tx { functions, versions, access, index, .. } = *tx;
    Ok(match command {
        Command::PutTrigger { tenant, .. } if !tx.tenant_exists(tenant)? => {
            Err(StateError::TenantNotFound { name: tenant.clone() })
        }
        Command::PutTrigger { tenant, spec } => {
            let key = trigger_key(tenant, &spec.name);
            if access.get(&key)?.is_some() {
                return Ok(Err(StateError::Conflict(format!("trigger `{}` already exists", spec.name))));
            }
            // It calls a scorer: a function that is one, now.
            let Some(head) = functions.get(function_key(tenant, &spec.function))? else {
                return Ok(Err(StateError::FunctionNotFound { tenant: tenant.clone(), name: spec.function.clone() }));
            };
            let head = decode::<FunctionRecord>(&head).map_err(abort)?;
            let active = versions.get(version_key(tenant, &spec.function, head.active))?;
            let kind = match active {
                Some(v) => decode::<Version>(&v).map_err(abort)?.spec.kind,
                None => String::new(),
            };
            if kind != "scorer" {
                let message = format!(
                    "a trigger calls a scorer; `{}` is {}",
                    spec.function,
                    wasmgrid_api::a(if kind.is_empty() { "function without a version" } else { &kind })
                );
                return Ok(Err(StateError::Conflict(message)));
            }
            let trigger = Trigger { tenant: tenant.clone(), spec: spec.clone(), paused: false, created_at: index };
            access.insert(key, encode(&trigger).map_err(abort)?)?;
            Ok(Applied::TriggerSet)
        }
        Command::PauseTrigger { tenant, name, paused } => {
            let key = trigger_key(tenant, name);
            let Some(v) = access.get(&key)? else { return Ok(Err(not_found(name))) };
            let trigger = Trigger { paused: *paused, ..decode::<Trigger>(&v).map_err(abort)? };
            access.insert(key, encode(&trigger).map_err(abort)?)?;
            Ok(Applied::TriggerSet)
        }
        Command::DeleteTrigger { tenant, name } => match access.remove(trigger_key(tenant, name))? {
            Some(_) => Ok(Applied::Deleted),
            None => Err(not_found(name)),
        },
        _ => Err(StateError::Storage("not a trigger command".into())),
    })
}

fn not_found(name: &str) -> StateError {
    StateError::TriggerNotFound { name: name.to_string() }
}
