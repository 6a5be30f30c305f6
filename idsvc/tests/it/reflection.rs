//! Server reflection as stock tools see it: both ports answer
//! `grpc.reflection.v1alpha` (what Python's grpcio-reflection speaks) and
//! `grpc.reflection.v1`, list exactly the services the port serves, and hand
//! out a descriptor for each of them.

use crate::harness::{Backend, Harness};
use prost::Message;
use std::collections::BTreeSet;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_reflection::pb::{v1, v1alpha};

const COMMON: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The services a port lists over one reflection version, each checked to
/// come with the descriptor file that declares it. A macro, because v1 and
/// v1alpha are one protocol generated into two packages.
macro_rules! listed_services {
    ($version:ident, $url:expr) => {{
        use $version::server_reflection_client::ServerReflectionClient;
        use $version::server_reflection_request::MessageRequest;
        use $version::server_reflection_response::MessageResponse;

        let channel = tonic::transport::Channel::from_shared($url.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let mut ask = async |request| {
            let request = $version::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(request),
            };
            let mut answers = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .unwrap()
                .into_inner();
            answers.message().await.unwrap().unwrap().message_response
        };
        let names: BTreeSet<String> = match ask(MessageRequest::ListServices(String::new())).await {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("expected a service list, got {other:?}"),
        };
        for name in &names {
            match ask(MessageRequest::FileContainingSymbol(name.clone())).await {
                Some(MessageResponse::FileDescriptorResponse(files)) => {
                    assert_declares(&files.file_descriptor_proto, name);
                }
                other => panic!("expected the file declaring {name}, got {other:?}"),
            }
        }
        names
    }};
}

#[tokio::test]
async fn both_ports_list_and_describe_their_services_in_v1alpha_and_v1() {
    let harness = Harness::new(Backend::Sqlite).await;
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_url = format!("http://{}", grpc.local_addr().unwrap());
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(idsvc::serve(
        harness.shared_service(),
        grpc,
        admin,
        idsvc::grpc::Transport::Plaintext,
        None,
        idsvc::AdminConfig::default(),
        shutdown.clone(),
    ));

    let mut public: BTreeSet<String> = COMMON.map(String::from).into();
    public.insert("idbase.v1.Identity".to_owned());
    let mut admin_only: BTreeSet<String> = COMMON.map(String::from).into();
    admin_only.insert("idbase.v1.Phases".to_owned());
    admin_only.insert("idbase.v1.Admin".to_owned());
    for (url, expected) in [(&grpc_url, &public), (&admin_url, &admin_only)] {
        assert_eq!(
            &listed_services!(v1alpha, url),
            expected,
            "v1alpha at {url}"
        );
        assert_eq!(&listed_services!(v1, url), expected, "v1 at {url}");
    }

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// One of the encoded `FileDescriptorProto`s declares the service `name`.
fn assert_declares(files: &[Vec<u8>], name: &str) {
    let declared = files.iter().any(|raw| {
        let file = prost_types::FileDescriptorProto::decode(raw.as_slice()).unwrap();
        file.service
            .iter()
            .any(|service| format!("{}.{}", file.package(), service.name()) == name)
    });
    assert!(declared, "no descriptor declares {name}");
}
