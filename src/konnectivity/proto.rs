//! Generated protocol types (from `proto/client.proto` and `proto/agent.proto`)
//! plus small constructors so the rest of the module never builds a `Packet`
//! with a `type` that disagrees with its payload arm.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/_.rs"));

use std::marker::PhantomData;

use bytes::Bytes;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

pub use packet::Payload;

/// Initial encode and decode buffer of every RPC (see [`TunnelCodec`]).
pub const CODEC_BUFFER: usize = 512;
/// Encoded messages batched into one HTTP/2 write (tonic's default).
pub const CODEC_YIELD: usize = 32 * 1024;

/// The codec of every generated client and server (build.rs `codec_path`):
/// prost, with small initial buffers. tonic allocates one encode and one
/// decode buffer eagerly per RPC, 8 KiB each by default; with one Proxy
/// stream per tunnel that made 16 KiB of every idle tunnel on the server
/// (and on the client). The buffers still grow to each message's size on
/// demand, so 32 KiB DATA packets are unaffected.
#[derive(Debug, Clone)]
pub struct TunnelCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for TunnelCodec<T, U> {
    fn default() -> Self {
        TunnelCodec(PhantomData)
    }
}

impl<T, U> Codec for TunnelCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(CODEC_BUFFER, CODEC_YIELD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(CODEC_BUFFER, CODEC_YIELD))
    }
}

impl Packet {
    pub fn dial_req(address: &str, random: i64) -> Packet {
        Packet {
            r#type: PacketType::DialReq as i32,
            payload: Some(Payload::DialRequest(DialRequest {
                protocol: "tcp".to_string(),
                address: address.to_string(),
                random,
            })),
        }
    }

    pub fn dial_rsp(random: i64, connect_id: i64, error: impl Into<String>) -> Packet {
        Packet {
            r#type: PacketType::DialRsp as i32,
            payload: Some(Payload::DialResponse(DialResponse {
                error: error.into(),
                connect_id,
                random,
            })),
        }
    }

    pub fn close_req(connect_id: i64) -> Packet {
        Packet {
            r#type: PacketType::CloseReq as i32,
            payload: Some(Payload::CloseRequest(CloseRequest { connect_id })),
        }
    }

    pub fn close_rsp(connect_id: i64, error: impl Into<String>) -> Packet {
        Packet {
            r#type: PacketType::CloseRsp as i32,
            payload: Some(Payload::CloseResponse(CloseResponse {
                error: error.into(),
                connect_id,
            })),
        }
    }

    pub fn dial_cls(random: i64) -> Packet {
        Packet {
            r#type: PacketType::DialCls as i32,
            payload: Some(Payload::CloseDial(CloseDial { random })),
        }
    }

    pub fn data(connect_id: i64, data: Bytes) -> Packet {
        Packet {
            r#type: PacketType::Data as i32,
            payload: Some(Payload::Data(Data {
                connect_id,
                error: String::new(),
                data,
            })),
        }
    }

    pub fn drain() -> Packet {
        Packet {
            r#type: PacketType::Drain as i32,
            payload: Some(Payload::Drain(Drain {})),
        }
    }

    /// The packet type; unknown numbers map to `None` (and are ignored by
    /// every receiver, as upstream does).
    pub fn kind(&self) -> Option<PacketType> {
        PacketType::try_from(self.r#type).ok()
    }

    /// The dial id of a DIAL_REQ/DIAL_RSP/DIAL_CLS (0 when absent).
    pub fn random(&self) -> i64 {
        match &self.payload {
            Some(Payload::DialRequest(r)) => r.random,
            Some(Payload::DialResponse(r)) => r.random,
            Some(Payload::CloseDial(r)) => r.random,
            _ => 0,
        }
    }

    /// The connection id of DATA/CLOSE_REQ/CLOSE_RSP/DIAL_RSP (0 when absent).
    pub fn connect_id(&self) -> i64 {
        match &self.payload {
            Some(Payload::Data(d)) => d.connect_id,
            Some(Payload::CloseRequest(r)) => r.connect_id,
            Some(Payload::CloseResponse(r)) => r.connect_id,
            Some(Payload::DialResponse(r)) => r.connect_id,
            _ => 0,
        }
    }
}

impl PacketType {
    /// Upstream's label value for metrics (`DIAL_REQ`, ...).
    pub fn label(self) -> &'static str {
        self.as_str_name()
    }
}

/// Largest DATA payload we ever send (one socket read). Upstream reads
/// 32 KiB chunks; every receiver accepts messages up to 4 MiB. Each packet
/// costs a read, a queue hop, a wakeup and an HTTP/2 frame whatever its
/// size: 128 KiB instead of 64 KiB took 15-20% off server + agent CPU per
/// MiB on downloads (benches/tunnel, README).
pub const MAX_DATA_CHUNK: usize = 128 * 1024;
/// Data a tunnel's queues hold in full DATA packets: the HTTP/2 windows
/// already keep megabytes in flight, deeper queues only add memory (see
/// `server::DEFAULT_FRONTEND_QUEUE`). Queue depths derive from it, so they
/// follow [`MAX_DATA_CHUNK`].
pub const QUEUED_DATA_BYTES: usize = 1024 * 1024;
/// Packets in [`QUEUED_DATA_BYTES`] (8 at 128 KiB chunks).
pub const DATA_QUEUE_PACKETS: usize = QUEUED_DATA_BYTES / MAX_DATA_CHUNK;
// A queue of 0 cannot exist (tokio's channel panics on it).
const _: () = assert!(DATA_QUEUE_PACKETS >= 1);
/// Largest message we accept (grpc-go's default receive limit).
pub const MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;
