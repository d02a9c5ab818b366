//! go-plugin's connection broker, plugin side. The host opens
//! `GRPCBroker/StartStream` at once and sends, for each service it offers
//! the plugin (OpenBao: storage and the system view, under the `broker_id`
//! of `Setup`), a `ConnInfo` naming a socket it listens on. The plugin only
//! dials: it keeps what arrives by service id and connects with the same
//! TLS material, roles reversed (the host now serves).

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming, transport::Channel};

use super::pb::plugin::{ConnInfo, grpc_broker_server::GrpcBroker};

/// How long a dial waits for the host to announce a service (go-plugin's
/// own wait is 5 s).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);

/// Services the host announced, and how to reach them.
pub struct Broker {
    announced: tokio::sync::watch::Sender<HashMap<u32, ConnInfo>>,
    tls: Arc<rustls::ClientConfig>,
}

impl Broker {
    /// A broker that dials with `tls`.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            announced: tokio::sync::watch::Sender::new(HashMap::new()),
            tls,
        }
    }

    /// A channel to the host service announced under `id`: waits for the
    /// announcement, then connects over TLS. The channel reconnects on its
    /// own if the connection drops.
    pub async fn dial(&self, id: u32) -> Result<Channel, String> {
        let mut rx = self.announced.subscribe();
        let info = tokio::time::timeout(ANNOUNCE_WAIT, rx.wait_for(|m| m.contains_key(&id)))
            .await
            .map_err(|_| format!("the host announced no broker service {id} within 5 s"))?
            .map_err(|_| "the broker stream closed".to_owned())?
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("broker service {id} vanished"))?;
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let (network, address) = (info.network, info.address);
        tracing::debug!(id, network, address, "dialing a broker service");
        tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let (connector, network, address) =
                    (connector.clone(), network.clone(), address.clone());
                async move {
                    let io: Box<dyn Io> = match network.as_str() {
                        "unix" => Box::new(tokio::net::UnixStream::connect(&address).await?),
                        "tcp" => Box::new(tokio::net::TcpStream::connect(&address).await?),
                        other => {
                            return Err(std::io::Error::other(format!(
                                "unknown broker network {other:?}"
                            )));
                        }
                    };
                    let name = rustls::pki_types::ServerName::try_from("localhost")
                        .map_err(std::io::Error::other)?;
                    let tls = connector.connect(name, io).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await
            .map_err(|e| format!("cannot connect to broker service {id}: {e}"))
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The broker service as served to the host.
pub struct BrokerService(pub Arc<Broker>);

type ConnStream = Pin<Box<dyn Stream<Item = Result<ConnInfo, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcBroker for BrokerService {
    type StartStreamStream = ConnStream;

    async fn start_stream(
        &self,
        request: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<ConnStream>, Status> {
        let mut incoming = request.into_inner();
        let broker = self.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(info)) = incoming.next().await {
                tracing::debug!(id = info.service_id, "broker service announced");
                broker.announced.send_modify(|m| {
                    m.insert(info.service_id, info);
                });
            }
        });
        // The plugin offers the host nothing: the answer stream stays open
        // and silent for the life of the plugin.
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
}
