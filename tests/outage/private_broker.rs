//! The fixture itself: a node starts, stops its application, is killed and comes back on its data.

use trove_tests::PrivateBroker;

#[test]
fn a_private_node_stops_is_killed_and_comes_back() {
    let mut b = PrivateBroker::start().expect("private broker");
    assert!(b.queues().expect("list_queues").is_empty());
    b.stop_app().expect("stop_app");
    assert!(std::net::TcpStream::connect(("127.0.0.1", b.port())).is_err());
    b.start_app().expect("start_app");
    assert!(std::net::TcpStream::connect(("127.0.0.1", b.port())).is_ok());
    b.kill();
    assert!(std::net::TcpStream::connect(("127.0.0.1", b.port())).is_err());
    b.restart().expect("restart");
    assert!(std::net::TcpStream::connect(("127.0.0.1", b.port())).is_ok());
}
