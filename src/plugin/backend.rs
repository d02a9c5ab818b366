//! The `pb.Backend` service OpenBao calls, and go-plugin's controller.
//!
//! The key manager is opened at the first call that may use storage
//! (storage is not usable during `Setup`): `Initialize` right after
//! mounting, or the first request after a relaunch. Opening loads every
//! ring, opens the mount's KEK and the sealed keys into wiped memory, and
//! runs one scheduler pass. OpenBao's periodic `rollback` calls (about once
//! a minute) run the scheduler after that.

use std::sync::Arc;

use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

use super::{
    broker::Broker,
    paths::{self, Refusal, Reply},
    pb::{
        pb::{
            Empty, HandleExistenceCheckArgs, HandleExistenceCheckReply, HandleRequestArgs,
            HandleRequestReply, InitializeArgs, InitializeReply, InvalidateKeyArgs, Paths,
            ProtoError, Response as BaoResponse, SetupArgs, SetupReply, SpecialPathsReply,
            TypeReply, backend_server::Backend,
        },
        plugin::{self, grpc_controller_server::GrpcController},
    },
    storage::{BaoStorage, BarrierKek},
};
use crate::{clock::SystemClock, keyring::KeyManager, store::KvStore};

/// ProtoError types (OpenBao `sdk/plugin/pb`).
const ERR_CODED: u32 = 3;
const ERR_UNSUPPORTED_OPERATION: u32 = 5;

/// The plugin's state, shared by its services.
pub struct Plugin {
    broker: Arc<Broker>,
    broker_id: std::sync::Mutex<Option<u32>>,
    keys: tokio::sync::OnceCell<KeyManager>,
    shutdown: Arc<tokio::sync::Notify>,
}

impl Plugin {
    /// A plugin that reaches storage through `broker` and stops serving
    /// when `shutdown` is notified.
    pub fn new(broker: Arc<Broker>, shutdown: Arc<tokio::sync::Notify>) -> Self {
        Self {
            broker,
            broker_id: std::sync::Mutex::new(None),
            keys: tokio::sync::OnceCell::new(),
            shutdown,
        }
    }

    /// The key manager, opened on first use. A failed open is retried by
    /// the next call.
    async fn keys(&self) -> Result<&KeyManager, Refusal> {
        self.keys
            .get_or_try_init(|| self.open())
            .await
            .map_err(|message| {
                tracing::error!(error = %message, "cannot open the key store");
                Refusal {
                    status: 503,
                    message: "Signet could not open its key store in this mount's storage; \
                              retry (OpenBao's log says why)"
                        .into(),
                }
            })
    }

    async fn open(&self) -> Result<KeyManager, String> {
        let id = self
            .broker_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ok_or("no Setup call yet")?;
        let channel = self.broker.dial(id).await?;
        let store = Arc::new(
            KvStore::open(BaoStorage::new(channel), "openbao")
                .await
                .map_err(|e| e.to_string())?,
        );
        let kek = Arc::new(BarrierKek::new(store.clone()));
        let keys = KeyManager::open(store, Arc::new(SystemClock), kek)
            .await
            .map_err(|e| e.to_string())?;
        keys.unseal().await.map_err(|e| e.to_string())?;
        tracing::info!(
            rings = keys.snapshot().rings().len(),
            "key store opened; keys loaded"
        );
        paths::scheduled(&keys).await;
        Ok(keys)
    }
}

fn coded(r: Refusal) -> ProtoError {
    ProtoError {
        err_type: ERR_CODED,
        err_msg: r.message,
        err_code: i64::from(r.status),
    }
}

fn reply(data: Map<String, Value>, warnings: Vec<String>) -> HandleRequestReply {
    HandleRequestReply {
        response: Some(BaoResponse {
            data: Value::Object(data).to_string(),
            warnings,
            headers: Default::default(),
        }),
        err: None,
    }
}

#[tonic::async_trait]
impl Backend for Arc<Plugin> {
    async fn setup(&self, request: Request<SetupArgs>) -> Result<Response<SetupReply>, Status> {
        let args = request.into_inner();
        *self.broker_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(args.broker_id);
        tracing::info!(backend = args.backend_uuid, "set up");
        Ok(Response::new(SetupReply { err: String::new() }))
    }

    async fn initialize(
        &self,
        _request: Request<InitializeArgs>,
    ) -> Result<Response<InitializeReply>, Status> {
        let err = self.keys().await.err().map(coded);
        Ok(Response::new(InitializeReply { err }))
    }

    async fn handle_request(
        &self,
        request: Request<HandleRequestArgs>,
    ) -> Result<Response<HandleRequestReply>, Status> {
        let Some(req) = request.into_inner().request else {
            return Err(Status::invalid_argument("no request"));
        };
        let keys = match self.keys().await {
            Ok(keys) => keys,
            Err(r) => {
                return Ok(Response::new(HandleRequestReply {
                    response: None,
                    err: Some(coded(r)),
                }));
            }
        };
        // `rollback` (about once a minute) runs the scheduler. Neither it
        // nor `resolve-path` (OpenBao 2.7 asks for a canonical path before
        // checking ACLs) has an answer here: "unsupported operation" tells
        // OpenBao to go on with the path as requested.
        if matches!(req.operation.as_str(), "rollback" | "resolve-path") {
            if req.operation == "rollback" {
                paths::scheduled(keys).await;
            }
            return Ok(Response::new(HandleRequestReply {
                response: None,
                err: Some(ProtoError {
                    err_type: ERR_UNSUPPORTED_OPERATION,
                    err_msg: "unsupported operation".into(),
                    err_code: 0,
                }),
            }));
        }
        let data: Map<String, Value> = if req.data.is_empty() {
            Map::new()
        } else {
            match serde_json::from_str(&req.data) {
                Ok(Value::Object(m)) => m,
                Ok(Value::Null) => Map::new(),
                _ => {
                    return Ok(Response::new(HandleRequestReply {
                        response: None,
                        err: Some(coded(Refusal {
                            status: 400,
                            message: "request data: must be a JSON object".into(),
                        })),
                    }));
                }
            }
        };
        let answer = paths::handle(keys, &req.operation, &req.path, &data).await;
        Ok(Response::new(match answer {
            Ok(Reply::Data(data, warnings)) => reply(data, warnings),
            Err(r) => {
                if r.status >= 500 {
                    tracing::warn!(path = req.path, status = r.status, error = r.message);
                }
                HandleRequestReply {
                    response: None,
                    err: Some(coded(r)),
                }
            }
        }))
    }

    async fn handle_existence_check(
        &self,
        _request: Request<HandleExistenceCheckArgs>,
    ) -> Result<Response<HandleExistenceCheckReply>, Status> {
        // No existence checks: every write stays an `update`, so ACL
        // policies grant `update` (never `create`) on these paths.
        Ok(Response::new(HandleExistenceCheckReply {
            check_found: false,
            exists: false,
            err: None,
        }))
    }

    async fn special_paths(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<SpecialPathsReply>, Status> {
        Ok(Response::new(SpecialPathsReply {
            paths: Some(Paths {
                root: Vec::new(),
                unauthenticated: vec!["jwks/*".into()],
                local_storage: Vec::new(),
                seal_wrap_storage: vec!["blobs/".into(), "kek".into(), "audit-key".into()],
            }),
        }))
    }

    async fn cleanup(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::info!("cleanup: the mount is going away or the plugin is stopping");
        Ok(Response::new(Empty {}))
    }

    async fn invalidate_key(
        &self,
        request: Request<InvalidateKeyArgs>,
    ) -> Result<Response<Empty>, Status> {
        // Another node wrote this mount's storage (performance standbys):
        // read it again.
        let key = request.into_inner().key;
        if let Some(keys) = self.keys.get()
            && let Err(e) = keys.refresh().await
        {
            tracing::warn!(key, error = %e, "refresh after invalidation failed");
        }
        Ok(Response::new(Empty {}))
    }

    async fn r#type(&self, _request: Request<Empty>) -> Result<Response<TypeReply>, Status> {
        Ok(Response::new(TypeReply { r#type: 1 }))
    }
}

/// `GRPCController/Shutdown`: stop serving and exit.
pub struct Controller(pub Arc<Plugin>);

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(
        &self,
        _request: Request<plugin::Empty>,
    ) -> Result<Response<plugin::Empty>, Status> {
        tracing::info!("shutdown requested by the host");
        self.0.shutdown.notify_one();
        Ok(Response::new(plugin::Empty {}))
    }
}
