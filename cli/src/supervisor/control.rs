//! The supervisor's control API: HTTP/1.1 + JSON on `<instance>/control.sock` (owner-only).
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /v1/status` | the instance [`State`](crate::instance::State) |
//! | `POST /v1/stop` | `{"stopping":true}`; the supervisor shuts the VM down gracefully |
//! | `POST /v1/stop?force=1` | the same, without waiting for the guest |

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::{watch, Mutex};

use crate::instance::State;

/// A stop request: `true` for a forced stop.
pub type StopSender = watch::Sender<Option<bool>>;

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
    stop: Arc<StopSender>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let force = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "force=1"));
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/status") => {
            let s = state.lock().await.clone();
            json(
                StatusCode::OK,
                serde_json::to_string(&s).unwrap_or_default(),
            )
        }
        (&Method::POST, "/v1/stop") => {
            let _ = stop.send(Some(force));
            json(StatusCode::OK, r#"{"stopping":true}"#.into())
        }
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"error":"no such endpoint"}"#.into(),
        ),
    })
}

/// Serves the API until the task is dropped.
pub async fn serve(listener: UnixListener, state: Arc<Mutex<State>>, stop: Arc<StopSender>) {
    let mut backoff = super::limits::AcceptBackoff::new("control.sock");
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff.succeeded();
                s
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on a ready listener.
                backoff.failed(&e).await;
                continue;
            }
        };
        if !super::docker_proxy::peer_allowed(&stream, "control.sock") {
            continue;
        }
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, state.clone(), stop.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Client side, for `vmctl status` and `vmctl stop`: one request, JSON answer.
pub async fn request(
    sock: &std::path::Path,
    method: Method,
    path: &str,
) -> Result<serde_json::Value, String> {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyperlocal::{UnixClientExt, UnixConnector, Uri};
    let client: Client<UnixConnector, Empty<Bytes>> = Client::unix();
    let uri: hyper::Uri = Uri::new(sock, path).into();
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e}"))?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// `GET /_ping` on a Docker socket: true when dockerd answers `OK`.
pub async fn docker_ping(sock: &std::path::Path) -> bool {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyperlocal::{UnixClientExt, UnixConnector, Uri};
    let client: Client<UnixConnector, Empty<Bytes>> = Client::unix();
    let uri: hyper::Uri = Uri::new(sock, "/_ping").into();
    let Ok(resp) = client.get(uri).await else {
        return false;
    };
    if !resp.status().is_success() {
        return false;
    }
    match resp.into_body().collect().await {
        Ok(b) => b.to_bytes().as_ref() == b"OK",
        Err(_) => false,
    }
}
