//! The built-in service: answers one authenticated request. Ping, the tape
//! volume inventory (sled, through `storage`), and admin requests, which are
//! forwarded to the registry and allowed only on admin sessions.
//!
//! Errors are answered by whose fault they are: the client's mistake is
//! `InvalidRequest`, a failure on the server's side (storage, a registry
//! that is gone) is `Internal`, with the detail in the server log.
//!
//! The inventory cannot be used to fill the disk: anonymous sessions may
//! not write it (unless `service.anonymous_writes`), it holds at most
//! `service.max_volumes`, and writes stop while the data disk has less
//! than `service.min_free_mb` free (time-outs still persist: they are
//! small, and they are what protects the server). Each is `LimitExceeded`,
//! with the setting named.

use protocol::message::{AdminRequest, ErrorCode, MAX_PAGE, Volume, VolumeId};
use protocol::{Request, Response, Role};

use crate::policy::AdminBan;
use crate::registry::{AdminBanFrom, AdminRelease, ListBans};
use crate::shared::Shared;
use crate::{BanError, now_ms};

/// Who is asking: the session's source and its id (an admin time-out of
/// their own address closes every session in it except the asking one,
/// which gets its answer and ends when the client goes), and whether the
/// session has a client key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Requester {
    pub ip: std::net::IpAddr,
    pub session: u64,
    /// The client's key; `None` for an anonymous (NK) session.
    pub key: Option<protocol::PublicKey>,
}

impl Requester {
    pub fn anonymous(&self) -> bool {
        self.key.is_none()
    }

    /// "key 0123…cdef from 192.0.2.1", for the log lines of admin actions.
    fn who(&self) -> String {
        match &self.key {
            Some(key) => format!("key {} from {}", key.fingerprint(), self.ip),
            None => format!("an anonymous session from {}", self.ip),
        }
    }
}

/// Why an inventory write is not allowed, if it is not.
fn refuse_write(
    shared: &Shared,
    requester: Requester,
    new_id: Option<&VolumeId>,
) -> Option<Response> {
    let config = &shared.service;
    if requester.anonymous() && !config.anonymous_writes {
        return Some(error(
            ErrorCode::Forbidden,
            "anonymous sessions may not write the inventory (service.anonymous_writes); connect with a client key".into(),
        ));
    }
    if let Some(id) = new_id
        && shared.store.volumes().len() >= config.max_volumes
        && !shared.store.volumes().contains(id).unwrap_or(false)
    {
        return Some(error(
            ErrorCode::LimitExceeded,
            format!(
                "the inventory is full: it holds at most {} volumes (service.max_volumes)",
                config.max_volumes
            ),
        ));
    }
    if shared
        .store
        .free_bytes()
        .is_some_and(|free| free < config.min_free_bytes)
    {
        return Some(error(
            ErrorCode::LimitExceeded,
            format!(
                "the server's data disk has less than {} MiB free (service.min_free_mb): inventory writes are paused",
                config.min_free_bytes >> 20
            ),
        ));
    }
    None
}

pub(crate) async fn handle(
    shared: &Shared,
    role: Role,
    requester: Requester,
    request: Request,
) -> Response {
    if let Err(message) = request.validate() {
        return error(ErrorCode::InvalidRequest, message.to_string());
    }
    match request {
        Request::Ping { nonce } => Response::Pong { nonce },
        Request::PutVolume(spec) => {
            if let Some(refused) = refuse_write(shared, requester, Some(&spec.id)) {
                return refused;
            }
            let volume = Volume {
                spec,
                updated_at_ms: now_ms(),
            };
            match shared.store.volumes().put(&volume) {
                Ok(()) => Response::Volume(volume),
                Err(e) => storage_error(e),
            }
        }
        Request::GetVolume { id } => match shared.store.volumes().get(&id) {
            Ok(Some(volume)) => Response::Volume(volume),
            Ok(None) => error(ErrorCode::NotFound, format!("no volume {id}")),
            Err(e) => storage_error(e),
        },
        Request::MoveVolume { id, location } => {
            if let Some(refused) = refuse_write(shared, requester, None) {
                return refused;
            }
            match shared.store.volumes().move_to(&id, location, now_ms()) {
                Ok(Some(volume)) => Response::Volume(volume),
                Ok(None) => error(ErrorCode::NotFound, format!("no volume {id}")),
                Err(e) => storage_error(e),
            }
        }
        Request::ListVolumes { after, limit } => {
            match shared
                .store
                .volumes()
                .list(after.as_ref(), usize::from(limit.min(MAX_PAGE)))
            {
                Ok((volumes, next_after)) => Response::Volumes {
                    volumes,
                    next_after,
                },
                Err(e) => storage_error(e),
            }
        }
        Request::Admin(_) if role != Role::Admin => error(
            ErrorCode::Forbidden,
            "admin requests need a session authenticated with an admin key".into(),
        ),
        Request::Admin(admin) => handle_admin(shared, requester, admin).await,
    }
}

async fn handle_admin(shared: &Shared, requester: Requester, request: AdminRequest) -> Response {
    let registry = &shared.registry;
    let answer = match request {
        AdminRequest::Stats => return Response::Stats(shared.stats()),
        AdminRequest::Reload => {
            log::info!("admin reload by {}", requester.who());
            return match shared.reloader.get() {
                Some(reloader) => match reloader.reload() {
                    Ok(summary) => Response::Reloaded { summary },
                    Err(why) => error(ErrorCode::InvalidRequest, why.to_string()),
                },
                None => error(
                    ErrorCode::Internal,
                    "this server cannot reload its settings".into(),
                ),
            };
        }
        AdminRequest::ListBans { after, limit } => registry
            .send(ListBans {
                after,
                limit: usize::from(limit.min(MAX_PAGE)),
            })
            .await
            .map(|r| r.map(|(bans, next_after)| Response::Bans { bans, next_after })),
        AdminRequest::AddBan {
            prefix,
            duration_secs,
            cause,
            force,
        } => registry
            .send(AdminBanFrom {
                ban: AdminBan {
                    prefix,
                    duration: duration_secs.map(std::time::Duration::from_secs),
                    cause,
                    force,
                    requester: Some(requester.ip),
                },
                session: Some(requester.session),
            })
            .await
            .map(|r| {
                r.map(|ban| {
                    log::info!(
                        "admin time-out of {} by {} (cause {})",
                        ban.prefix,
                        requester.who(),
                        ban.cause
                    );
                    Response::BanAdded(ban)
                })
            }),
        AdminRequest::Feeds => return Response::Feeds(shared.stats.feeds()),
        AdminRequest::Top { recent } => {
            return Response::Top(Box::new(shared.top(usize::from(recent))));
        }
        AdminRequest::ListBansByCause {
            cause,
            after,
            limit,
        } => registry
            .send(crate::registry::ListBansByCause {
                cause,
                after,
                limit: usize::from(limit.min(MAX_PAGE)),
            })
            .await
            .map(|r| r.map(|(bans, next_after)| Response::Bans { bans, next_after })),
        AdminRequest::ImportBans {
            prefixes,
            duration_secs,
            cause,
            force,
        } => {
            let import = crate::registry::ImportBans {
                prefixes,
                duration: duration_secs.map(std::time::Duration::from_secs),
                cause,
                force,
                requester: Some(requester.ip),
                session: Some(requester.session),
            };
            import_bans(registry, &requester, import).await
        }
        AdminRequest::ShowBan { target } => registry
            .send(crate::registry::ShowBan { target })
            .await
            .map(|r| r.map(|report| Response::BanShown(Box::new(report)))),
        AdminRequest::RemoveBan { prefix } => {
            registry.send(AdminRelease { prefix }).await.map(|r| {
                r.map(|removed| {
                    if let Some(released) = removed {
                        log::info!("admin release of {released} by {}", requester.who());
                    }
                    Response::BanRemoved {
                        prefix: removed.unwrap_or(prefix),
                        existed: removed.is_some(),
                    }
                })
            })
        }
    };
    match answer {
        Ok(Ok(response)) => response,
        Ok(Err(failure)) => ban_error(failure),
        Err(mailbox) => {
            log::error!("admin request: the ban registry is unavailable: {mailbox}");
            error(
                ErrorCode::Internal,
                "the ban registry is unavailable; see the server log".into(),
            )
        }
    }
}

/// `bans import` over the wire: one answer with the counts.
async fn import_bans(
    registry: &actix::Addr<crate::registry::BanRegistry>,
    requester: &Requester,
    import: crate::registry::ImportBans,
) -> Result<Result<Response, BanError>, actix::MailboxError> {
    let cause = import.cause;
    let imported = registry.send(import).await?;
    log::info!(
        "admin import of {} time-outs by {} (cause {cause})",
        imported.added,
        requester.who()
    );
    Ok(Ok(Response::Imported {
        added: u32::try_from(imported.added).unwrap_or(u32::MAX),
        refused: u32::try_from(imported.refused).unwrap_or(u32::MAX),
        first_refusal: imported.first_refusal.unwrap_or_default(),
    }))
}

fn ban_error(failure: BanError) -> Response {
    if failure.is_server_fault() {
        log::error!("admin request failed: {failure}");
        error(
            ErrorCode::Internal,
            format!("server error ({failure}); see the server log"),
        )
    } else {
        error(ErrorCode::InvalidRequest, failure.to_string())
    }
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error { code, message }
}

fn storage_error(failure: storage::StorageError) -> Response {
    log::error!("volume inventory: {failure}");
    error(
        ErrorCode::Internal,
        "storage error; see the server log".into(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use actix::Actor;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use protocol::frame::decode_plaintext;
    use protocol::{AccessPolicy, PrivateKey, Responder};

    use super::*;
    use crate::admission::{Admission, LimitConfig};
    use crate::ban_core::BanCore;
    use crate::policy::BanPolicy;
    use crate::registry::BanRegistry;
    use crate::stats::Stats;
    use crate::view::BanView;

    /// Arbitrary bytes, decoded as the frame decoder would, through the
    /// whole request path (validation, service, registry, storage) of a
    /// real `Shared`: every request that decodes gets an answer, nothing
    /// panics, and a non-admin never gets past `Forbidden` for admin requests.
    #[test]
    fn any_decodable_request_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = storage::Store::open(dir.path(), &storage::StoreOptions::default()).unwrap();
        actix::System::new().block_on(async move {
            let view = Arc::new(BanView::default());
            let stats = Arc::new(Stats::default());
            let parts = crate::ban_core::CoreParts {
                allow: Default::default(),
                store: store.clone(),
                view: view.clone(),
                stats: stats.clone(),
                kernel: None,
            };
            let (core, _) = BanCore::restore(BanPolicy::default(), parts, crate::now_ms()).unwrap();
            let shared = Shared {
                responder: Responder::new(&PrivateKey::generate(), AccessPolicy::default()),
                registry: BanRegistry::new(core).start(),
                store,
                view,
                stats,
                admission: Admission::new(LimitConfig::default()),
                allow: Default::default(),
                proxy_trusted: Vec::new(),
                reloader: Default::default(),
                tiers: Default::default(),
                aggregation: (32, 64),
                deadlines: std::sync::RwLock::new(crate::Deadlines {
                    handshake: Duration::from_secs(5),
                    idle: Duration::from_secs(60),
                    write: Duration::from_secs(10),
                }),
                service: crate::ServiceConfig::default(),
            };
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            // Seeds of every kind of request, encoded as on the wire, then
            // mutated: random bytes alone almost never decode.
            let spec = protocol::message::VolumeSpec {
                id: "A00001L9".parse().unwrap(),
                media_type: "LTO-9".parse().unwrap(),
                location: "Vault 3".parse().unwrap(),
                status: protocol::message::VolumeStatus::Active,
            };
            let seeds: Vec<Vec<u8>> = [
                Request::Ping { nonce: 7 },
                Request::PutVolume(spec.clone()),
                Request::GetVolume { id: spec.id },
                Request::MoveVolume {
                    id: spec.id,
                    location: spec.location,
                },
                Request::ListVolumes {
                    after: None,
                    limit: 10,
                },
                Request::Admin(protocol::AdminRequest::ListBans {
                    after: None,
                    limit: 10,
                }),
                Request::Admin(protocol::AdminRequest::AddBan {
                    prefix: "198.51.100.0/24".parse().unwrap(),
                    duration_secs: Some(60),
                    cause: "x".parse().unwrap(),
                    force: false,
                }),
                Request::Admin(protocol::AdminRequest::RemoveBan {
                    prefix: "198.51.100.0/24".parse().unwrap(),
                }),
                Request::Admin(protocol::AdminRequest::Stats),
            ]
            .iter()
            .map(|request| {
                let mut bytes = vec![0u8]; // flags: not compressed
                bytes.extend(
                    bincode::encode_to_vec(request, protocol::frame::wire_config()).unwrap(),
                );
                bytes
            })
            .collect();
            let strategy = (
                0..seeds.len(),
                proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                any::<bool>(),
                any::<bool>(),
            );
            let mut decoded = 0;
            for _ in 0..2_000 {
                let (seed, mutations, admin, anonymous) =
                    strategy.new_tree(&mut runner).unwrap().current();
                let mut bytes = seeds[seed].clone();
                for (at, value) in mutations {
                    let at = 1 + at % (bytes.len() - 1);
                    bytes[at] = value;
                }
                let mut scratch = Vec::new();
                let Ok(request) = decode_plaintext::<Request>(&bytes, &mut scratch) else {
                    continue;
                };
                decoded += 1;
                let is_admin = matches!(request, Request::Admin(_));
                let role = if admin { Role::Admin } else { Role::User };
                let requester = Requester {
                    ip: "192.0.2.1".parse().unwrap(),
                    session: 1,
                    key: (!anonymous).then(|| protocol::PrivateKey::generate().public_key()),
                };
                let response = handle(&shared, role, requester, request).await;
                if is_admin && !admin {
                    assert!(
                        matches!(
                            response,
                            Response::Error {
                                code: ErrorCode::Forbidden | ErrorCode::InvalidRequest,
                                ..
                            }
                        ),
                        "{response:?}"
                    );
                }
            }
            assert!(decoded > 100, "only {decoded} cases decoded");
        });
    }
}
