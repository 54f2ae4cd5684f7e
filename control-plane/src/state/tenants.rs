//! Commands on tenants and tokens, applied inside the state's transaction.

use sled::transaction::ConflictableTransactionResult;

use super::model::*;
use super::{Owned, Tx, abort};

/// Applies a tenant or token command; `doomed` is what deleting a tenant
/// removes, found before the transaction.
pub(super) fn apply(
    tx: &Tx<'_>,
    command: &Command,
    doomed: &Owned,
) -> ConflictableTransactionResult<Result<Applied>, StateError> {
    let Tx { functions, access, index, .. } = *tx;
    Ok(match command {
        Command::CreateTenant { name, .. } if tx.tenant_exists(name)? => {
            Err(StateError::TenantExists { name: name.clone() })
        }
        Command::CreateTenant { name, quotas } => {
            let record =
                TenantRecord { name: name.clone(), created_at: index, quotas: quotas.clone(), gpu_exhausted: false };
            access.insert(tenant_key(name), encode(&record).map_err(abort)?)?;
            Ok(Applied::TenantCreated)
        }
        Command::SetQuotas { name, .. } | Command::GpuExhausted { name, .. } => {
            // `default` gets a stored record once its quotas are set.
            let record = match access.get(tenant_key(name))? {
                Some(v) => decode::<TenantRecord>(&v).map_err(abort)?,
                None if name == DEFAULT_TENANT => TenantRecord::default_tenant(),
                None => return Ok(Err(StateError::TenantNotFound { name: name.clone() })),
            };
            let record = match command {
                Command::SetQuotas { quotas, .. } => TenantRecord { quotas: quotas.clone(), ..record },
                Command::GpuExhausted { exhausted, .. } => TenantRecord { gpu_exhausted: *exhausted, ..record },
                _ => record,
            };
            access.insert(tenant_key(name), encode(&record).map_err(abort)?)?;
            Ok(Applied::TenantCreated)
        }
        Command::DeleteTenant { name } if name == DEFAULT_TENANT => Err(StateError::DefaultTenant),
        Command::DeleteTenant { name } => {
            if access.remove(tenant_key(name))?.is_none() {
                return Ok(Err(StateError::TenantNotFound { name: name.clone() }));
            }
            for key in &doomed.functions {
                functions.remove(key.as_slice())?;
            }
            for key in &doomed.versions {
                tx.versions.remove(key.as_slice())?;
            }
            for key in &doomed.access {
                access.remove(key.as_slice())?;
            }
            Ok(Applied::TenantDeleted)
        }
        Command::CreateToken { tenant: Some(tenant), .. } if !tx.tenant_exists(tenant)? => {
            Err(StateError::TenantNotFound { name: tenant.clone() })
        }
        Command::CreateToken { sha256, tenant, role } => {
            let record = TokenRecord { sha256: sha256.clone(), tenant: tenant.clone(), role: *role, created_at: index };
            access.insert(token_key(sha256), encode(&record).map_err(abort)?)?;
            Ok(Applied::TokenCreated)
        }
        Command::RevokeToken { sha256 } => match access.remove(token_key(sha256))? {
            Some(_) => Ok(Applied::TokenRevoked),
            None => Err(StateError::TokenNotFound { id: wasmgrid_api::token_id(sha256) }),
        },
        other => Err(StateError::Storage(format!("not a tenant command: {other:?}"))),
    })
}
