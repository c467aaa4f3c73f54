"""Runs inside the MONAI Label venv (monailabel --no-deps + requests; no scribbleflow, no numpy):
drives a scribbleflow server with ``monailabel.client.MONAILabelClient`` as 3D Slicer's module
does, asserts what the client expects, and writes what it got to a JSON file for the test.

Usage: client_script.py URL INPUTS_JSON OUTPUT_JSON
"""

import json
import os
import sys

from monailabel.client import MONAILabelClient

url, inputs_path, output_path = sys.argv[1:4]
inputs = json.loads(open(inputs_path).read())
out = {}
client = MONAILabelClient(url, tmpdir=inputs["tmpdir"], client_id="slicer-test")

assert client.auth_enabled() is True
token = client.auth_token(inputs["username"], inputs["password"])
assert token["token_type"] == "bearer" and token["access_token"]
client.update_auth(token)
assert client.auth_valid_token()

info = client.info()
assert info["labels"] == inputs["labels"], info["labels"]
assert {m["type"] for m in info["models"].values()} == {"segmentation", "scribbles", "deepgrow"}
assert "config" not in info  # 3D Slicer's module refuses servers whose /info/ still has it
out["info"] = info

assert client.upload_image(inputs["image"], "case1") == {"image": "case1"}
sample = client.next_sample("first", {})
assert sample["id"] == "case1" and sample["checksum"].startswith("SHA256:"), sample
out["sample"] = sample

seg_file, seg_params = client.infer("segmentation", "case1", {})
assert os.path.isfile(seg_file) and seg_params["label_names"]["background"] == 0, seg_params
out["segmentation"] = {"file": seg_file, "params": seg_params}

scribble_params = {"label_info": inputs["label_info"], "selected_label_name": inputs["labels"][0],
                   "result_extension": ".nrrd", "result_dtype": "uint8"}
scr_file, scr_params = client.infer("scribbles", "case1", scribble_params, label_in=inputs["scribbles"])
assert scr_file.endswith(".nrrd") and scr_params["scribbleflow"]["round_id"], scr_params
out["scribbles"] = {"file": scr_file, "params": scr_params}

click_params = {"label": inputs["labels"][0], "foreground": inputs["foreground"], "background": inputs["background"]}
clk_file, clk_params = client.infer("clicks", "case1", click_params)
assert clk_params["scribbleflow"]["round_id"] > scr_params["scribbleflow"]["round_id"], clk_params
out["clicks"] = {"file": clk_file, "params": clk_params}

saved = client.save_label("case1", inputs["label"], params={"label_info": inputs["final_label_info"]})
assert saved["image"] == "case1" and saved["label"] == "case1" and saved["version"] == 1, saved
out["saved"] = saved

task = client.train_start("scribbleflow", {})
assert task["status"] in ("SUBMITTED", "RUNNING", "DONE"), task
status = client.train_status()
assert status["id"] and status["status"] in ("SUBMITTED", "RUNNING", "DONE", "STOPPED"), status
out["train"] = {"start": task, "status": status, "running": client.train_status(check_if_running=True)}

datastore = client.datastore()
assert "final" in datastore["objects"]["case1"]["labels"], datastore
out["label_file"] = client.download_label("case1", "final")
out["datastore"] = datastore

with open(output_path, "w") as handle:
    json.dump(out, handle)
print("client script: ok")
