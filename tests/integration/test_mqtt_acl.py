"""The fleet ACL (provisioning/mosquitto/acl.fleet) on a real Mosquitto: a device publishes only under its
own prefix and reads only its own alerts; fleetwatch's user reads every device and publishes every alert. A
private broker of the test's own (the shipped ACL file, a password file made with mosquitto_passwd), MQTT 5
so that refusals come back as reason codes instead of silence."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.conftest import REPO
from tests.integration.harness import PrivateBroker, free_port, wait_until

ACL = REPO / "provisioning" / "mosquitto" / "acl.fleet"
USERS = {"fleetwatch": "fw-pass-1", "d1": "d1-pass-1", "d2": "d2-pass-1"}


class Client:
    def __init__(self, port: int, user: str, password: str | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.granted: list[ReasonCode] = []
        self.acks: dict[int, ReasonCode] = {}
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"acl-{user}", protocol=MQTTProtocolVersion.MQTTv5
        )
        self.client.username_pw_set(user, USERS[user] if password is None else password)
        self.client.on_connect = lambda c, u, f, reason, p: (self.granted.append(reason), self.connected.set())
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda c, u, mid, codes, p: (self.granted.extend(codes), self.subscribed.set())
        self.client.on_publish = lambda c, u, mid, reason, p: self.acks.__setitem__(mid, reason)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(5)

    def subscribe(self, topic_filter: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic_filter, qos=1)
        assert self.subscribed.wait(5)

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        assert wait_until(lambda: info.mid in self.acks, 5), f"no PUBACK for {topic}"
        return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_device_publishes_only_under_its_own_prefix_and_reads_only_its_own_alerts(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    for user, password in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True, capture_output=True)
    port = free_port()
    broker = PrivateBroker(tmp_path, port)
    broker.config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\nacl_file {ACL}\n"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    broker.start()
    clients: list[Client] = []
    try:
        pipeline = Client(port, "fleetwatch")
        d1, d2 = Client(port, "d1"), Client(port, "d2")
        clients += [pipeline, d1, d2]
        pipeline.subscribe("sensors/#")
        d1.subscribe("alerts/#")
        d2.subscribe("alerts/#")

        # Its own prefix: accepted and delivered. Another device's: refused, and nobody receives it.
        assert not d1.publish("sensors/s1/d1/temp", b"21.5").is_failure
        refused = d1.publish("sensors/s1/d2/temp", b"99.9")
        assert refused.is_failure and refused.getName() == "Not authorized"
        assert wait_until(lambda: len(pipeline.messages) >= 1, 5)

        # fleetwatch publishes an alert for each device: each device sees only its own.
        for device in ("d1", "d2"):
            assert not pipeline.publish(f"alerts/hot/readings/{device}/temp", device.encode()).is_failure
        assert wait_until(lambda: d1.messages and d2.messages, 5)
        wait_until(lambda: False, 0.5)  # anything that should not arrive, would by now
        assert pipeline.messages == [("sensors/s1/d1/temp", b"21.5")]
        assert d1.messages == [("alerts/hot/readings/d1/temp", b"d1")]
        assert d2.messages == [("alerts/hot/readings/d2/temp", b"d2")]

        # A device cannot publish an alert, and a wrong password is refused at connect.
        assert d2.publish("alerts/hot/readings/d2/temp", b"forged").is_failure
        denied = paho.Client(CallbackAPIVersion.VERSION2, client_id="acl-intruder", protocol=MQTTProtocolVersion.MQTTv5)
        denied.username_pw_set("d1", "wrong")
        codes: list[ReasonCode] = []
        denied.on_connect = lambda c, u, f, reason, p: codes.append(reason)
        denied.connect("127.0.0.1", port)
        denied.loop_start()
        assert wait_until(lambda: codes, 5)
        denied.loop_stop()
        assert codes[0].is_failure, codes
    finally:
        for client in clients:
            client.close()
        broker.stop()
