//! Commands on modules, functions and nodes, applied inside the state's
//! transaction.

use sled::transaction::ConflictableTransactionResult;

use super::model::*;
use super::{Tx, abort};
use wasmgrid_api::Trial;

/// Applies a module, function or node command.
pub(super) fn apply(tx: &Tx<'_>, command: &Command) -> ConflictableTransactionResult<Result<Applied>, StateError> {
    let Tx { modules, functions, versions, nodes, access, index } = *tx;
    Ok(match command {
        Command::PutModule { tenant, .. } | Command::PutArtifact { tenant, .. } | Command::Deploy { tenant, .. }
            if !tx.tenant_exists(tenant)? =>
        {
            Err(StateError::TenantNotFound { name: tenant.clone() })
        }
        Command::PutModule { tenant, sha256, bytes, .. } => {
            // `existed` is the tenant's own view: whether another tenant
            // stored the same bytes is none of its business.
            let existed = access.insert(owner_key(tenant, sha256), &[])?.is_some();
            if modules.get(sha256.as_bytes())?.is_none() {
                modules.insert(sha256.as_bytes(), bytes.as_slice())?;
            }
            Ok(Applied::ModuleStored { sha256: sha256.clone(), existed })
        }
        Command::PutArtifact { tenant, sha256, size } => {
            let existed = access.insert(artifact_owner_key(tenant, sha256), &[])?.is_some();
            access.insert(artifact_key(sha256), encode(size).map_err(abort)?)?;
            Ok(Applied::ArtifactStored { sha256: sha256.clone(), existed })
        }
        Command::Deploy { tenant, name, module, spec, placement, trial } => {
            if modules.get(module.as_bytes())?.is_none() || access.get(owner_key(tenant, module))?.is_none() {
                return Ok(Err(StateError::ModuleNotFound { sha256: module.clone() }));
            }
            for sha256 in spec.artifacts.values() {
                if access.get(artifact_owner_key(tenant, sha256))?.is_none() {
                    return Ok(Err(StateError::ArtifactNotFound { sha256: sha256.clone() }));
                }
            }
            let key = function_key(tenant, name);
            let mut head = match functions.get(&key)? {
                Some(v) => decode::<FunctionRecord>(&v).map_err(abort)?,
                None => FunctionRecord {
                    tenant: tenant.clone(),
                    name: name.clone(),
                    active: 0,
                    latest: 0,
                    placement: Vec::new(),
                    trial: None,
                },
            };
            let version = head.latest + 1;
            let record = Version { version, module: module.clone(), spec: spec.clone(), created_at: index };
            versions.insert(version_key(tenant, name, version), encode(&record).map_err(abort)?)?;
            head.latest = version;
            // A trial needs a version to stand beside: a function's first
            // version is active whatever it was deployed as.
            match trial {
                Some(spec) if head.active != 0 => head.trial = Some(Trial { version, spec: *spec }),
                // A new active version ends the trial: its candidate was
                // compared with another.
                _ => {
                    head.active = version;
                    head.trial = None;
                }
            }
            if let Some(nodes) = placement {
                head.placement = nodes.clone();
            }
            functions.insert(key, encode(&head).map_err(abort)?)?;
            Ok(Applied::Deployed { version })
        }
        Command::Rollback { tenant, name, version } => {
            let key = function_key(tenant, name);
            let Some(v) = functions.get(&key)? else {
                return Ok(Err(StateError::FunctionNotFound { tenant: tenant.clone(), name: name.clone() }));
            };
            let mut head = decode::<FunctionRecord>(&v).map_err(abort)?;
            if !(1..=head.latest).contains(version) {
                let (tenant, name, version) = (tenant.clone(), name.clone(), *version);
                return Ok(Err(StateError::VersionNotFound { tenant, name, version }));
            }
            head.active = *version;
            if head.trial.as_ref().is_some_and(|t| t.version == *version) {
                head.trial = None;
            }
            functions.insert(key, encode(&head).map_err(abort)?)?;
            Ok(Applied::RolledBack { version: *version })
        }
        Command::SetTrial { tenant, name, trial } => {
            let key = function_key(tenant, name);
            let Some(v) = functions.get(&key)? else {
                return Ok(Err(StateError::FunctionNotFound { tenant: tenant.clone(), name: name.clone() }));
            };
            let mut head = decode::<FunctionRecord>(&v).map_err(abort)?;
            if let Some(t) = trial {
                if !(1..=head.latest).contains(&t.version) {
                    let (tenant, name, version) = (tenant.clone(), name.clone(), t.version);
                    return Ok(Err(StateError::VersionNotFound { tenant, name, version }));
                }
                if t.version == head.active {
                    let message = format!("version {} is the active version; a candidate is another", t.version);
                    return Ok(Err(StateError::Conflict(message)));
                }
            }
            head.trial = trial.clone();
            functions.insert(key, encode(&head).map_err(abort)?)?;
            Ok(Applied::TrialSet)
        }
        Command::Delete { tenant, name } => {
            let Some(v) = functions.remove(function_key(tenant, name))? else {
                return Ok(Err(StateError::FunctionNotFound { tenant: tenant.clone(), name: name.clone() }));
            };
            let head = decode::<FunctionRecord>(&v).map_err(abort)?;
            for version in 1..=head.latest {
                versions.remove(version_key(tenant, name, version))?;
            }
            Ok(Applied::Deleted)
        }
        Command::Place { changes } => {
            for change in changes {
                let key = function_key(&change.tenant, &change.name);
                let Some(v) = functions.get(&key)? else { continue };
                let mut head = decode::<FunctionRecord>(&v).map_err(abort)?;
                head.placement = change.nodes.clone();
                functions.insert(key, encode(&head).map_err(abort)?)?;
            }
            Ok(Applied::Placed)
        }
        Command::RegisterNode { id, address } => {
            let record = NodeRecord { id: id.clone(), address: address.clone(), registered_at: index };
            nodes.insert(id.as_bytes(), encode(&record).map_err(abort)?)?;
            Ok(Applied::NodeRegistered)
        }
        other => Err(StateError::Storage(format!("not a function command: {other:?}"))),
    })
}
