"""The policy comparison recorded in ``docs/simulation.md``, reproducible with one command::

    python benchmarks/policies_simulated.py --out /tmp/sim-bench [--functions 200 --hours 24]

Cost model: the seed's measured latencies (``loadgen/data/models.m5.json``: 26 Keras
applications on an AWS m5.large) with sizes = Keras' published parameter counts x 4 bytes
(float32 weights), because ``loaded_size`` is 0 in that file and building the full zoo with
TensorFlow on this shared 2-core box is too slow. ``KERAS_PARAMS`` below is the
"Parameters" column of keras.io/api/applications.

Steps: write the sizes JSON; ``brulee trace synth`` a synthetic Azure-like workload paired by
quantiles with the 26 models; ``brulee simulate`` every policy at 25/50/75 %; the same on the
real 2019 rows (``brulee trace workload`` of ``loadgen/data/azure2019_invocations_first9rows.csv``
with ``--triggers all``, 9 functions). Finally the simulator's speed on the 1.2M-request
synthetic day with ``lru`` and ``cremebrulee`` against the pre-split simulator
(``benchmarks/simulator_speed.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click

KERAS_PARAMS_M = {
    "Xception": 22.9, "VGG16": 138.4, "VGG19": 143.7, "ResNet50": 25.6, "ResNet50V2": 25.6,
    "ResNet101": 44.7, "ResNet101V2": 44.7, "ResNet152": 60.4, "ResNet152V2": 60.4,
    "InceptionV3": 23.9, "InceptionResNetV2": 55.9, "MobileNet": 4.3, "MobileNetV2": 3.5,
    "DenseNet121": 8.1, "DenseNet169": 14.3, "DenseNet201": 20.2, "NASNetMobile": 5.3,
    "NASNetLarge": 88.9, "EfficientNetB0": 5.3, "EfficientNetB1": 7.9, "EfficientNetB2": 9.2,
    "EfficientNetB3": 12.3, "EfficientNetB4": 19.5, "EfficientNetB5": 30.6,
    "EfficientNetB6": 43.3, "EfficientNetB7": 66.7,
}  # fmt: skip

ALL_POLICIES = (
    "cremebrulee,cremebrulee:cost=increase,cremebrulee-oracle,belady,lru,lfu,fifo,random,"
    "size,loadtime,popularity,gdsf"
)
DATA = Path(__file__).parent.parent / "loadgen" / "data"  # (benchmarks/ moved out of loadgen/)


def brulee(*args: str) -> None:
    cmd = [str(Path(sys.executable).parent / "brulee"), *args]
    click.echo("$ brulee " + " ".join(args), err=True)
    subprocess.run(cmd, check=True)


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--functions", default=200, show_default=True)
@click.option("--hours", default=24.0, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--policies", default=ALL_POLICIES, show_default=True)
@click.option("--speed/--no-speed", default=True, help="Also time a 1M-request workload.")
def main(out: str, functions: int, hours: float, workers: int, policies: str, speed: bool):
    """Run the recorded policy comparison (synthetic + real 2019 rows) and the speed test."""
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    sizes = outp / "keras-sizes.json"
    sizes.write_text(json.dumps({k: int(v * 1e6 * 4) for k, v in KERAS_PARAMS_M.items()}))
    prof = str(DATA / "models.m5.json")
    synth = outp / "synth.csv.gz"
    brulee("trace", "synth", "--functions", str(functions), "--hours", str(hours), "--seed", "1",
           "--out", str(synth), "--profiles", prof, "--pairing", "quantiles")  # fmt: skip
    common = ["--profiles", prof, "--sizes", str(sizes), "--policies", policies,
              "--memory-cap", "25%,50%,75%", "--workers", str(workers), "--seed", "0"]  # fmt: skip
    brulee("simulate", "--workload", str(synth), *common, "--out", str(outp / "synth"))
    real = outp / "azure2019.csv"
    brulee("trace", "workload", str(DATA / "azure2019_invocations_first9rows.csv"),
           "--triggers", "all", "--out", str(real), "--profiles", prof)  # fmt: skip
    brulee("simulate", "--workload", str(real), *common, "--out", str(outp / "azure2019"))
    if speed:  # the same 1.2M-request day against the pre-split simulator, and RQ 1 vs 2
        subprocess.run([sys.executable, str(Path(__file__).parent / "simulator_speed.py"),
                        "--workload", str(synth), "--sizes", str(sizes)], check=True)  # fmt: skip


if __name__ == "__main__":
    main()
