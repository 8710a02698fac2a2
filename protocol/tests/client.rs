//! The client against real loopback sockets: a minimal in-test server that
//! uses the same protocol pieces a real server does, and servers that
//! misbehave in each way a client must report clearly.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::connection::Connection;
use protocol::initiation::{Notice, read_initiation};
use protocol::{
    AccessPolicy, Client, ClientConfig, ClientError, PrivateKey, Request, Responder, Response, Role,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Answers Ping with Pong, anything else with an error; records peers.
async fn echo_server(
    key: PrivateKey,
    policy: AccessPolicy,
) -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let responder = Arc::new(Responder::new(&key, policy));
    let seen = peers.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, peer) = listener.accept().await.unwrap();
            seen.lock().unwrap().push(peer);
            let responder = responder.clone();
            tokio::spawn(async move {
                let mut first = Vec::new();
                if read_initiation(&mut stream, &mut first).await.is_err() {
                    return;
                }
                let accepted = match responder.accept(&first) {
                    Ok(accepted) => accepted,
                    Err(rejection) => {
                        if let Some(notice) = rejection.notice() {
                            stream.write_all(&notice).await.ok();
                        }
                        return;
                    }
                };
                stream.write_all(&accepted.response).await.unwrap();
                let mut connection = Connection::new(stream, accepted.transport);
                while let Ok(Some(request)) = connection.receive::<Request>().await {
                    let response = match request {
                        Request::Ping { nonce } => Response::Pong { nonce },
                        _ => Response::Error {
                            code: protocol::message::ErrorCode::InvalidRequest,
                            message: "echo server".into(),
                        },
                    };
                    connection.send(&response).await.unwrap();
                }
            });
        }
    });
    (addr, peers)
}

fn config(server: &PrivateKey) -> ClientConfig {
    let mut config = ClientConfig::new(server.public_key());
    config.connect_deadline = Duration::from_secs(2);
    config.handshake_deadline = Duration::from_millis(500);
    config.request_deadline = Duration::from_secs(2);
    config
}

#[tokio::test]
async fn ping_with_and_without_a_client_key_from_a_chosen_source() {
    let server_key = PrivateKey::generate();
    let admin = PrivateKey::generate();
    let policy = AccessPolicy {
        authorized: None,
        admins: [admin.public_key()].into(),
    };
    let (addr, peers) = echo_server(server_key.clone(), policy).await;

    let mut anonymous = config(&server_key);
    anonymous.bind = Some("127.0.0.2".parse().unwrap());
    let mut client = Client::connect(&addr.to_string(), &anonymous)
        .await
        .unwrap();
    assert_eq!(client.role(), Role::User);
    assert_eq!(
        client.call(&Request::Ping { nonce: 41 }).await.unwrap(),
        Response::Pong { nonce: 41 }
    );
    assert_eq!(
        client.call(&Request::Ping { nonce: 42 }).await.unwrap(),
        Response::Pong { nonce: 42 }
    );
    assert_eq!(peers.lock().unwrap()[0].ip().to_string(), "127.0.0.2");

    let mut with_key = config(&server_key);
    with_key.client_key = Some(admin);
    with_key.bind = Some("127.0.0.3".parse().unwrap());
    let mut client = Client::connect(&addr.to_string(), &with_key).await.unwrap();
    assert_eq!(client.role(), Role::Admin);
    assert_eq!(
        client.call(&Request::Ping { nonce: 1 }).await.unwrap(),
        Response::Pong { nonce: 1 }
    );
    assert_eq!(peers.lock().unwrap()[1].ip().to_string(), "127.0.0.3");
}

#[tokio::test]
async fn wrong_server_key_is_reported_as_such() {
    let server_key = PrivateKey::generate();
    let (addr, _) = echo_server(server_key, AccessPolicy::default()).await;
    let other = PrivateKey::generate();
    let error = Client::connect(&addr.to_string(), &config(&other))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            error,
            ClientError::Rejected {
                notice: Notice::WrongServerKey,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("not this server's key"),
        "{error}"
    );
}

#[tokio::test]
async fn unauthorized_client_key_is_reported_as_such() {
    let server_key = PrivateKey::generate();
    let policy = AccessPolicy {
        authorized: Some([PrivateKey::generate().public_key()].into()),
        admins: Default::default(),
    };
    let (addr, _) = echo_server(server_key.clone(), policy).await;
    let mut stranger = config(&server_key);
    stranger.client_key = Some(PrivateKey::generate());
    let error = Client::connect(&addr.to_string(), &stranger)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            error,
            ClientError::Rejected {
                notice: Notice::Unauthorized,
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error() {
    // Bind then drop a listener: the port is (for a moment) known to be closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let key = PrivateKey::generate();
    let error = Client::connect(&addr.to_string(), &config(&key))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, ClientError::Connect { .. }), "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot connect to {addr}")),
        "{error}"
    );
}

#[tokio::test]
async fn unresolvable_server_is_a_resolve_error() {
    let key = PrivateKey::generate();
    let error = Client::connect("no-port-given", &config(&key))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, ClientError::Resolve { .. }), "{error}");
}

#[tokio::test]
async fn server_that_closes_at_once_and_server_that_never_answers() {
    let key = PrivateKey::generate();
    let closing = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing_addr = closing.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = closing.accept().await.unwrap();
            drop(stream);
        }
    });
    let error = Client::connect(&closing_addr.to_string(), &config(&key))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, ClientError::ClosedDuringHandshake { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("timed out"), "{error}");

    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let (stream, _) = silent.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(stream);
    });
    let error = Client::connect(&silent_addr.to_string(), &config(&key))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, ClientError::HandshakeTimeout { .. }),
        "{error}"
    );
    held.abort();
}

#[tokio::test]
async fn server_closing_after_the_handshake_is_reported_as_closed() {
    let server_key = PrivateKey::generate();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let responder = Responder::new(&server_key, AccessPolicy::default());
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut first = Vec::new();
        read_initiation(&mut stream, &mut first).await.unwrap();
        let accepted = responder.accept(&first).unwrap();
        stream.write_all(&accepted.response).await.unwrap();
        // Close without answering anything.
    });
    let mut client = Client::connect(&addr.to_string(), &config(&server_key))
        .await
        .unwrap();
    let error = client.call(&Request::Ping { nonce: 0 }).await.unwrap_err();
    assert!(matches!(error, ClientError::Closed), "{error}");
}
