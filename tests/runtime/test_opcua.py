"""OPC UA: a real asyncua client against the OPC UA server of an in-process fsac-run scoring
real images. Browse by name, the last result equals the journaled record, Inspect answers
each request once (deadline: verdict error), SelectRecipe switches or refuses, health alarm
nodes, and who may connect."""

from __future__ import annotations

import asyncio
import math
import socket

import pytest

asyncua = pytest.importorskip("asyncua", reason="asyncua is not installed (pip install 'fsac[opcua]')")
from asyncua import Client, ua  # noqa: E402

from fsac.errors import FsacError  # noqa: E402
from fsac.runtime.daemon import Daemon  # noqa: E402
from fsac_run_helpers import free_port, read_jsonl  # noqa: E402
from test_daemon import config, slow_handle  # noqa: E402
from test_health import make_inputs  # noqa: E402
from test_trigger import start, stop  # noqa: E402

NS = "urn:fsac:station"
RESULT = ("PartId", "RequestId", "Verdict", "Score", "Logit", "Threshold", "Error", "Time", "Recipe", "Model",
          "ModelHash", "FrameId", "Seq", "RunId")
FIELDS = ("part_id", "request_id", "verdict", "score", "logit", "logit_threshold", "error", "time", "recipe",
          "model", "model_sha256", "frame_id", "seq", "run_id")


def opc(port: int, steps, station: str = "Station", user: str | None = None, password: str | None = None):
    """Runs `await steps(client, station_node, idx)` in one client session; returns its result."""

    async def main():
        client = Client(f"opc.tcp://127.0.0.1:{port}/fsac/", timeout=20)
        if user is not None:
            client.set_user(user)
            client.set_password(password)
        async with client:
            idx = await client.get_namespace_index(NS)
            node = await client.nodes.objects.get_child(f"{idx}:{station}")
            return await steps(client, node, idx)

    return asyncio.run(main())


async def read(node, idx, *path: str):
    return await (await node.get_child([f"{idx}:{p}" for p in path])).read_value()


async def last_result(node, idx) -> dict:
    return {f: await read(node, idx, n) for n, f in zip(RESULT, FIELDS)}


def as_record(values: dict) -> dict:
    """Node values back in record terms: absent fields are '' / NaN / -1 on the nodes."""
    out = {}
    for k, v in values.items():
        if v == "" and k in ("part_id", "request_id", "error") or isinstance(v, float) and math.isnan(v):
            v = None
        out[k] = v
    return out


def test_inspect_answers_once_and_the_nodes_show_the_journaled_record(tmp_path, make_model, model_file,
                                                                      image_folder):
    cap = make_model("cap.fsac.onnx", scale=0.5)
    broken = tmp_path / "broken.fsac.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the seal no longer matches
    broken.write_bytes(bytes(data))
    out = tmp_path / "r.jsonl"
    port = free_port()
    cfg = config(model_file, str(image_folder), out, "source.mode=trigger", "trigger.deadline_s=5",
                 f"opcua.port={port}", "station.site=s1", "station.line=l2", "station.station=st3",
                 f"recipes.cap.path={cap}", f"recipes.broken.path={broken}")
    daemon, t, result = start(cfg)

    async def steps(client, node, idx):
        names = {(await c.read_browse_name()).Name for c in await node.get_children()}
        assert set(RESULT) | {"State", "ActiveRecipe", "Counters", "Health", "Inspect", "SelectRecipe"} <= names
        for _ in range(50):
            if await read(node, idx, "State") == "running":
                break
            await asyncio.sleep(0.1)
        assert await read(node, idx, "State") == "running"
        answers = [await node.call_method(f"{idx}:Inspect", f"P-{i}", f"r{i}") for i in range(2)]
        again = await node.call_method(f"{idx}:Inspect", "P-1", "r1")  # duplicate: the same answer, no frame
        assert again == answers[1]
        for _ in range(50):  # the nodes follow the journal thread's acknowledgement
            if await read(node, idx, "PartId") == "P-1":
                break
            await asyncio.sleep(0.05)
        shown = await last_result(node, idx)
        counters = [await read(node, idx, "Counters", c) for c in ("Frames", "Good", "Defective", "Errors")]
        with pytest.raises(ua.UaStatusCodeError) as refused:
            await node.call_method(f"{idx}:SelectRecipe", "broken")
        assert refused.value.code == ua.StatusCodes.BadInvalidArgument
        assert await read(node, idx, "ActiveRecipe") == "default"
        selected = await node.call_method(f"{idx}:SelectRecipe", "cap")
        assert selected[0] == "cap" and selected[1] == daemon.recipes.handle("cap").current.sha256
        third = await node.call_method(f"{idx}:Inspect", "P-2", "")
        return answers, shown, counters, third

    answers, shown, counters, third = opc(port, steps, station="s1_l2_st3")
    assert stop(daemon, t, result) == 0
    records = read_jsonl(out)
    assert [(r["part_id"], r["request_id"]) for r in records[:2]] == [("P-0", "r0"), ("P-1", "r1")]
    assert len(records) == 3  # the duplicate took no frame
    for (verdict, score, logit, error), r in zip(answers, records):
        assert (verdict, score, logit, error) == (r["verdict"], r["score"], r["logit"], r["error"] or "")
        assert verdict in ("good", "defective")
    assert as_record(shown) == {f: records[1][f] for f in FIELDS}  # exactly the journaled record
    assert counters[0] == 2 and counters[1] + counters[2] == 2 and counters[3] == 0
    assert records[2]["part_id"] == "P-2" and records[2]["recipe"] == "cap" and third[2] == records[2]["logit"]
    assert records[2]["model_sha256"] != records[1]["model_sha256"] and records[1]["recipe"] == "default"


def test_a_deadline_miss_is_verdict_error(tmp_path, model_file, image_folder):
    out = tmp_path / "r.jsonl"
    port = free_port()
    cfg = config(model_file, str(image_folder), out, "source.mode=trigger", "trigger.deadline_s=0.25",
                 "model.batch_size=1", f"opcua.port={port}")
    daemon, t, result = start(cfg, handle=slow_handle(cfg, 0.6))  # every inference takes 0.6 s

    async def steps(client, node, idx):
        return await node.call_method(f"{idx}:Inspect", "P-late", "late-1")

    verdict, score, logit, error = opc(port, steps)
    assert stop(daemon, t, result) == 0
    assert verdict == "error" and error.startswith("deadline exceeded") and math.isnan(score) and math.isnan(logit)
    records = [r for r in read_jsonl(out) if r["request_id"] == "late-1"]
    assert len(records) == 1 and records[0]["verdict"] == "error" and records[0]["part_id"] == "P-late"


def test_health_alarm_nodes_follow_the_frames(tmp_path, model_file, bottle_images, bottle):
    model, folder = make_inputs(tmp_path, model_file, bottle_images, bottle)  # a_good_0..3, b_dark, c_blurred
    port = free_port()
    cfg = config(model, str(folder), tmp_path / "r.jsonl", "source.mode=trigger", "trigger.deadline_s=5",
                 f"opcua.port={port}")
    daemon, t, result = start(cfg)

    async def alarms(node, idx, seq):
        for _ in range(50):
            if await read(node, idx, "Seq") == seq:
                break
            await asyncio.sleep(0.05)
        return (await read(node, idx, "Health", "Alarms"),
                {a: await read(node, idx, "Health", a) for a in ("lens_blocked", "lighting_changed", "focus_lost",
                                                                  "reject_rate_high")})

    async def steps(client, node, idx):
        seen = []
        for i in range(6):
            await node.call_method(f"{idx}:Inspect", f"P-{i}", "")
            seen.append(await alarms(node, idx, i))
        return seen

    seen = opc(port, steps)
    assert stop(daemon, t, result) == 0
    none = {"lens_blocked": False, "lighting_changed": False, "focus_lost": False, "reject_rate_high": False}
    assert seen[3] == ([], none)
    assert seen[4] == (["lighting_changed"], {**none, "lighting_changed": True})  # b_dark.png
    assert seen[5] == (["focus_lost"], {**none, "focus_lost": True})  # c_blurred.png: the dark alarm cleared


def login_config(tmp_path, model_file, monkeypatch, *extra):
    """A watch-mode daemon whose OPC UA server requires the login line3 / s3cret-pw."""
    monkeypatch.setenv("T_OPC_USER", "line3")
    monkeypatch.setenv("T_OPC_PASS", "s3cret-pw")
    watched = tmp_path / "in"
    watched.mkdir()
    port = free_port()
    return port, config(model_file, str(watched), tmp_path / "r.jsonl", "source.kind=watch", f"opcua.port={port}",
                        "opcua.username_env=T_OPC_USER", "opcua.password_env=T_OPC_PASS", *extra)


def test_credentials_are_required_and_inspect_needs_trigger_mode(tmp_path, model_file, monkeypatch):
    port, cfg = login_config(tmp_path, model_file, monkeypatch)
    daemon, t, result = start(cfg)
    try:
        async def steps(client, node, idx):
            with pytest.raises(ua.UaStatusCodeError) as no_trigger:
                await node.call_method(f"{idx}:Inspect", "P-1", "")
            return no_trigger.value.code, await read(node, idx, "Verdict")

        with pytest.raises(ua.UaStatusCodeError) as anon:  # refused although on loopback: credentials are set
            opc(port, steps)
        assert anon.value.code == ua.StatusCodes.BadIdentityTokenRejected
        with pytest.raises(ua.UaStatusCodeError) as wrong:
            opc(port, steps, user="line3", password="wrong")
        assert wrong.value.code == ua.StatusCodes.BadUserAccessDenied
        code, verdict = opc(port, steps, user="line3", password="s3cret-pw")
        assert code == ua.StatusCodes.BadInvalidState and verdict == ""
    finally:
        assert stop(daemon, t, result) == 0


def test_settings_errors_are_one_line_and_name_the_setting(tmp_path, model_file, monkeypatch):
    out = tmp_path / "r.jsonl"
    monkeypatch.delenv("T_OPC_MISSING", raising=False)
    cases = {("opcua.host=0.0.0.0",): "opcua.host: 0.0.0.0 is not loopback; set opcua.username_env",
             ("opcua.prot=4841",): "opcua.prot: unknown setting (did you mean port?)",
             ("opcua.port=http",): "opcua.port:",
             ("opcua.username_env=T_OPC_MISSING", "opcua.password_env=T_OPC_MISSING"):
                 "opcua.username_env: the environment variable T_OPC_MISSING is not set",
             ("opcua.security_policies=[Basic256Sha256_SignAndEncrypt]",): "opcua.certificate:"}
    for extra, message in cases.items():
        with pytest.raises(FsacError) as e:
            config(model_file, str(tmp_path), out, *extra)
        assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    # Disabled: no server, and the daemon does not even import asyncua for it.
    cfg = config(model_file, str(tmp_path), out, "opcua.enabled=false", "opcua.host=0.0.0.0")
    assert cfg.opcua.enabled is False and cfg.opcua.host == "0.0.0.0"


def test_a_port_in_use_is_a_start_error_naming_opcua_port(tmp_path, model_file):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = config(model_file, str(tmp_path), tmp_path / "r.jsonl", "source.kind=watch", f"opcua.port={port}")
        daemon = Daemon(cfg, install_signals=False)
        with pytest.raises(FsacError, match=rf"opcua.port: cannot listen on 127.0.0.1:{port}"):
            daemon.run()


def test_certificate_security_refuses_plain_sessions(tmp_path, model_file, monkeypatch):
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    async def certs():
        for who, use in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
            await setup_self_signed_certificate(tmp_path / f"{who}.pem", tmp_path / f"{who}.der",
                                                f"urn:freeopcua:python:{who}", "localhost", [use],
                                                {"commonName": f"fsac test {who}"})

    asyncio.run(certs())
    port, cfg = login_config(tmp_path, model_file, monkeypatch,
                             f"opcua.certificate={tmp_path / 'server.der'}", f"opcua.private_key={tmp_path / 'server.pem'}",
                 "opcua.security_policies=[Basic256Sha256_SignAndEncrypt]")
    daemon, t, result = start(cfg)
    try:
        async def state(client, node, idx):
            return await read(node, idx, "State")

        with pytest.raises(ua.UaError, match="No matching endpoints"):  # the server offers no plain endpoint
            opc(port, state, user="line3", password="s3cret-pw")

        async def secure():
            client = Client(f"opc.tcp://127.0.0.1:{port}/fsac/", timeout=20)
            client.application_uri = "urn:freeopcua:python:client"
            await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{tmp_path / 'client.der'},"
                                             f"{tmp_path / 'client.pem'}")
            client.set_user("line3")
            client.set_password("s3cret-pw")
            async with client:
                idx = await client.get_namespace_index(NS)
                return await read(await client.nodes.objects.get_child(f"{idx}:Station"), idx, "State")

        assert asyncio.run(secure()) in ("starting", "running")
    finally:
        assert stop(daemon, t, result) == 0


def test_the_runtime_imports_neither_asyncua_nor_torch_without_an_opcua_section(tmp_path, model_file):
    import subprocess
    import sys

    code = ("import sys; from fsac.runtime.config import load_config; import fsac.runtime.daemon; "
            f"load_config(None, ['http.enabled=false'], model={str(model_file)!r}, source={str(tmp_path)!r}, "
            f"jsonl={str(tmp_path / 'r.jsonl')!r}); "
            "print(sorted(m for m in ('asyncua', 'torch', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
