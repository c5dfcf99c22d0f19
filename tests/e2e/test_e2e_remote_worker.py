"""The real bot (`python -m bot`, WORKER_MODE=external, WORKERS=tcp://…) driving a worker on "another host" over
TLS with a token, through a TCP proxy the test can cut silently: /imagine works, and a cut link mid-job loses
nothing and delivers nothing twice."""

from __future__ import annotations

import pytest
from remote_helpers import CuttableProxy, free_port, make_pki, start_remote_worker

from e2e_helpers import pngs, queued_job, result_messages, wait_result

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-0123456789abcdef"
HEARTBEAT = 6.0  # 3 s gave false "silent" alarms on a busy 2-core box (tests/e2e/test_e2e_workers.py too)


@pytest.fixture
async def remote_bot(fake, bot_process, tmp_path, tiny_models_dir):
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    worker, worker_log = start_remote_worker(tmp_path / "gpu-host" / "data", tiny_models_dir, pki, TOKEN, HEARTBEAT,
                                             port)
    proxy = CuttableProxy(port)
    await proxy.start()
    bot = bot_process(WORKER_MODE="external", WORKERS=f"tcp://localhost:{proxy.port}", WORKER_TLS_CA=str(pki.ca),
                      WORKER_TOKEN=TOKEN, WORKER_HEARTBEAT_TIMEOUT=str(HEARTBEAT), JOB_MAX_ATTEMPTS="3")
    try:
        await bot.start()
        yield bot, proxy, worker_log
    finally:
        await bot.stop()
        await proxy.close()
        worker.kill()
        worker.wait()


async def test_imagine_on_a_remote_worker_survives_a_cut_link(fake, remote_bot):
    bot, proxy, worker_log = remote_bot
    first = await queued_job(await fake.slash_command("imagine", {"prompt": "a harbour", "count": 1}, user=fake.alice))
    [result] = await wait_result(fake, first, count=1, timeout=120)
    assert len(pngs(result)) == 1

    ix = await fake.slash_command("imagine", {"prompt": "a slow castle", "steps": 16, "count": 2}, user=fake.bob)
    job_id = await queued_job(ix)
    await fake.wait_for(lambda: "step" in (ix.original.content or ""), timeout=60, what="progress")
    proxy.cut()  # the network path dies silently mid-job: no FIN, no RST
    [result] = await wait_result(fake, job_id, count=2, timeout=180)
    assert len(pngs(result)) == 2 and len(result_messages(fake, job_id)) == 1
    assert "was silent" in bot.log_path.read_text(errors="replace")  # noticed by the heartbeat, not a job timeout
    assert fake.spec_violations == []
