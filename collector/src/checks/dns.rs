//! `dns` checks: one query over UDP, built and read with hickory-proto; up when the answer is
//! NOERROR with a record of the asked type (holding `expect`, when set).

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::Name,
};
use tokio::net::UdpSocket;

use super::{CheckError, DnsCheck};

/// The largest answer read (EDNS0's common size).
const MAX_ANSWER: usize = 4096;

/// Asks `check.server` for `check.query` and reads the first answer that matches the query's id.
pub(super) async fn query(check: &DnsCheck) -> Result<(), CheckError> {
    let name = Name::from_ascii(&check.query).map_err(CheckError::Dns)?;
    let id: u16 = rand::random();
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name, check.record_type));
    let request = message.to_vec().map_err(CheckError::Dns)?;
    let local: std::net::SocketAddr =
        if check.server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let io = |what| move |source| CheckError::Io { what, source };
    let socket = UdpSocket::bind(local).await.map_err(io("opening a UDP socket"))?;
    socket.connect(check.server).await.map_err(io("connecting the UDP socket"))?;
    socket.send(&request).await.map_err(io("sending the query"))?;
    let mut buffer = vec![0; MAX_ANSWER];
    loop {
        let length = socket.recv(&mut buffer).await.map_err(io("receiving the answer"))?;
        let Ok(answer) = Message::from_vec(buffer.get(..length).unwrap_or_default()) else {
            continue;
        };
        if answer.id() == id && answer.message_type() == MessageType::Response {
            return judge(check, &answer);
        }
    }
}

/// Whether `answer` is what `check` expects.
fn judge(check: &DnsCheck, answer: &Message) -> Result<(), CheckError> {
    if answer.response_code() != ResponseCode::NoError {
        return Err(CheckError::DnsCode(answer.response_code().to_string()));
    }
    let got: Vec<String> = answer
        .answers()
        .iter()
        .filter(|record| record.record_type() == check.record_type)
        .map(|record| record.data().to_string())
        .collect();
    let holds = match &check.expect {
        Some(expected) => {
            got.iter().any(|data| data.trim_end_matches('.') == expected.trim_end_matches('.'))
        }
        None => !got.is_empty(),
    };
    if holds {
        Ok(())
    } else {
        Err(CheckError::DnsUnexpected {
            got,
            expected: check
                .expect
                .clone()
                .unwrap_or_else(|| format!("a {} record", check.record_type)),
        })
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::{RData, Record, RecordType, rdata::A};

    use super::*;

    fn check(expect: Option<&str>) -> DnsCheck {
        DnsCheck {
            server: "198.19.0.12:53".parse().unwrap(),
            query: "db.internal".into(),
            record_type: RecordType::A,
            expect: expect.map(str::to_owned),
        }
    }

    fn answer(code: ResponseCode, address: Option<[u8; 4]>) -> Message {
        let mut message = Message::new();
        message.set_message_type(MessageType::Response).set_response_code(code);
        if let Some(address) = address {
            let name = Name::from_ascii("db.internal.").unwrap();
            message.add_answer(Record::from_rdata(
                name,
                60,
                RData::A(A::from(std::net::Ipv4Addr::from(address))),
            ));
        }
        message
    }

    #[test]
    fn answers_are_judged_by_code_type_and_expected_data() {
        let found = answer(ResponseCode::NoError, Some([198, 19, 0, 12]));
        assert!(judge(&check(None), &found).is_ok());
        assert!(judge(&check(Some("198.19.0.12")), &found).is_ok());
        assert_eq!(
            judge(&check(Some("198.19.0.13")), &found).unwrap_err().to_string(),
            "DNS answer holds [\"198.19.0.12\"], expected \"198.19.0.13\""
        );
        let empty = answer(ResponseCode::NoError, None);
        assert_eq!(
            judge(&check(None), &empty).unwrap_err().to_string(),
            "DNS answer holds [], expected \"a A record\""
        );
        let missing = answer(ResponseCode::NXDomain, None);
        assert_eq!(
            judge(&check(None), &missing).unwrap_err().to_string(),
            "DNS answer Non-Existent Domain"
        );
    }
}
