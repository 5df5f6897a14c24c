"""Beamline launcher, IOC settings and the ``tomolock sim`` command."""

from __future__ import annotations

import argparse
import os

import msgpack
import pytest
import zmq

from tomolock.devices.sim import cli
from tomolock.devices.sim.beamline import SimBeamline, reserve_ca_port
from tomolock.devices.sim.ioc import IocConfig, SimBeamlineIOC, build_parser, config_from_args


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); check its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _check_proxy_forwards(proxy_in: str, proxy_out: str) -> None:
    """Documents published into the proxy come out of it (bluesky wire: prefix name payload)."""
    ctx = zmq.Context()
    pub, sub = ctx.socket(zmq.PUB), ctx.socket(zmq.SUB)
    try:
        pub.connect(f"tcp://{proxy_in}")
        sub.connect(f"tcp://{proxy_out}")
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        message = b"tomolock start " + msgpack.packb({"uid": "u1"})
        for _ in range(100):  # PUB/SUB slow joiner: repeat until the path is up
            pub.send(message)
            if sub.poll(50):
                assert sub.recv() == message
                return
        raise AssertionError("nothing came out of the bluesky proxy")
    finally:
        pub.close(linger=0)
        sub.close(linger=0)
        ctx.term()


def test_beamline_starts_serves_and_leaves_no_process():
    config = IocConfig(prefix="LIFE:", shape=(64, 64), n_darks=0, n_flats=0)
    with SimBeamline(config=config, port=reserve_ca_port(), with_proxy=True) as bl:
        pid = bl.info["pid"]
        assert bl.running and _alive(pid)
        assert bl.zmq_address.startswith("tcp://127.0.0.1:")
        assert bl.info["port"] == bl.port
        assert bl.proxy_in.startswith("127.0.0.1:") and bl.proxy_out.startswith("127.0.0.1:")
        _check_proxy_forwards(bl.proxy_in, bl.proxy_out)
        proxy_pid = bl._proxy.pid
    assert not bl.running
    assert not _alive(pid) and not _alive(proxy_pid)


def test_ioc_that_cannot_start_reports_its_output():
    bl = SimBeamline(config=IocConfig(), port=reserve_ca_port(), python="/bin/false",
                     startup_timeout_s=5)
    with pytest.raises(RuntimeError, match="exited with 1"):
        bl.start()
    assert not bl.running


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ifm_rate_hz": 0.0}, "ifm_rate_hz"),
        ({"piezo_limits_um": (5.0, -5.0)}, "piezo_limits_um"),
        ({"zmq_mode": "router"}, "zmq_mode"),
        ({"shape": (4, 4)}, "shape"),
        ({"drift_preset": "wild"}, "drift_preset"),
        ({"vlm_noise_um": -1.0}, "vlm_noise_um"),
        ({"n_darks": -1}, "n_darks"),
    ],
)
def test_bad_ioc_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IocConfig(**kwargs)


def test_cli_arguments_round_trip_into_the_config():
    args = build_parser().parse_args(
        ["--port", "5099", "--prefix", "X:", "--rot-limits=-10,10", "--shape", "128x96",
         "--zmq-mode", "pub", "--drift", "severe", "--darks", "3"])
    cfg = config_from_args(args)
    assert (cfg.prefix, cfg.rot_limits_deg, cfg.shape) == ("X:", (-10.0, 10.0), (128, 96))
    assert (cfg.zmq_mode, cfg.drift_preset, cfg.n_darks) == ("pub", "severe", 3)
    ioc = SimBeamlineIOC(cfg)
    assert "X:STAGE:ROT.VAL" in ioc.pvdb and "X:DET:TRIGGER" in ioc.pvdb
    assert ioc.pvdb["X:STAGE:ROT.HLM"].value == 10.0


def test_sim_subcommand_registers_and_validates():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    args = parser.parse_args(["sim", "--duration", "-1"])
    assert args.func is cli.main
    assert cli.main(args) == 2
    args = parser.parse_args(["sim", "--port", "70000"])
    assert cli.main(args) == 2
