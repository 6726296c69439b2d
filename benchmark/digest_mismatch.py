"""What containerd 2.1 does when a mirror sends wrong bytes for a layer (right size, one byte flipped).

A real containerd (CRI pull, transfer service) and a CNCF distribution upstream; containerd's hosts.toml puts
a scripted mirror first. The mirror answers everything 404 except the layer, which it serves tampered, in
one of two ways:
- `whole`: the whole wrong body (206 to a Range request, else 200);
- `holdback`: every byte but the last, then it closes the connection (the design "verify while streaming,
  hold back the end until the digest matches"), and answers the resume (`Range: bytes=N-`) 404.
Then the mirror answers 404 to everything (the rogue is gone) and the pull is tried again, at once and after
`--pause` seconds. Prints each pull's outcome, the ingest left behind and the requests the mirror saw.

Run: `.venv/bin/python -m benchmark.digest_mismatch --mode whole --chunk 1048576 [--pause 2]`
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import trio

from benchmark.daemons import Containerd, Registry
from benchmark.images import ImageSpec, build, push

NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class ScriptedMirror:
    def __init__(self, digest: str, tampered: bytes, mode: str) -> None:
        self.digest, self.tampered, self.mode = digest, tampered, mode
        self.seen: list[str] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    got = await stream.receive_some(65536)
                    if not got:
                        return
                    head += got
                lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
                path = lines[0].split()[1]
                ranged = next(
                    (v.strip() for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "range"), None
                )
                self.seen.append(f"{'layer' if self.digest in path else path.split('?')[0][-30:]} {ranged or ''}")
                start = int(ranged[6:].split("-")[0]) if ranged else 0
                if self.digest not in path or self.mode == "gone" or (self.mode == "holdback" and start > 0):
                    await stream.send_all(NOT_FOUND)
                    continue
                body = self.tampered[start:]
                status = "206 Partial Content" if ranged else "200 OK"
                headers = (
                    f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nDocker-Content-Digest: {self.digest}\r\n"
                )
                if ranged:
                    headers += f"Content-Range: bytes {start}-{len(self.tampered) - 1}/{len(self.tampered)}\r\n"
                await stream.send_all((headers + "\r\n").encode())
                if self.mode == "holdback":
                    await stream.send_all(body[:-1])
                    return
                await stream.send_all(body)
        except trio.BrokenResourceError:
            pass
        finally:
            await stream.aclose()


async def run(mode: str, chunk: int, pause: float, size: int) -> None:
    image = build(ImageSpec(layers=(size,), compression="none", seed=4242))
    layer = image.platforms[0].layers[0]
    tampered = bytearray(image.read_blob(layer.digest))
    tampered[len(tampered) // 2] ^= 0xFF
    with (
        tempfile.TemporaryDirectory(prefix="spegel-mismatch-") as tmp,
        Registry(Path(tmp) / "up") as up,
        Containerd(Path(tmp) / "ctrd", chunk_size=chunk) as containerd,
    ):
        async with httpx.AsyncClient() as client:
            await push(image, client, up.url, "exp/app", "v1")
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        mirror = ScriptedMirror(str(layer.digest), bytes(tampered), mode)
        hosts = containerd.hosts_dir / up.address
        hosts.mkdir(parents=True, exist_ok=True)
        port = listeners[0].socket.getsockname()[1]
        hosts.joinpath("hosts.toml").write_text(
            f'server = "{up.url}"\n\n[host."http://127.0.0.1:{port}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        ingest = containerd.content_root / "ingest"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, mirror.handle, listeners)
            for attempt, wait in enumerate((0.0, 0.0, pause)):
                await trio.sleep(wait)
                started = time.monotonic()
                try:
                    await containerd.pull(f"{up.address}/exp/app:v1", timeout=60)
                    outcome = "succeeded"
                except Exception as exc:  # the outcome is what is measured
                    outcome = f"failed: {str(exc)[-160:]}"
                left = [p.stat().st_size for p in ingest.glob("*/data")] if ingest.exists() else []
                print(
                    f"pull {attempt + 1} (mirror {mirror.mode}, after {wait:.0f} s): {outcome} in "
                    f"{time.monotonic() - started:.2f} s; ingest data left: {left} bytes of {layer.size}"
                )
                print(f"  mirror saw: {', '.join(mirror.seen)}")
                mirror.seen.clear()
                mirror.mode = "gone"
                if outcome == "succeeded":
                    break
            nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["whole", "holdback"], default="whole")
    parser.add_argument("--chunk", type=int, default=1 << 20, help="containerd's multipart chunk (0: off)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds before the third pull")
    parser.add_argument("--size-mib", type=int, default=16)
    args = parser.parse_args()
    trio.run(run, args.mode, args.chunk, args.pause, args.size_mib << 20)


if __name__ == "__main__":
    main()
