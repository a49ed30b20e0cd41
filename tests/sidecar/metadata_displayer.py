"""Read TFLite metadata with tflite-support's MetadataDisplayer (runs in the tflite-support side venv).

stdin: {"models": [paths]}. stdout, last line: {path: {"metadata": the displayer's JSON (parsed),
"custom": {name: the custom metadata bytes decoded as UTF-8}, "associated_files": [...]}}.
"""
import json
import sys

from tflite_support import metadata
from tflite_support import metadata_schema_py_generated as schema


def custom_metadata(buf):
    root = schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAsModelMetadata(buf, 0))
    out = {}
    for sg in root.subgraphMetadata or []:
        for cm in sg.customMetadata or []:
            out[cm.name.decode()] = bytes(bytearray(cm.data)).decode()
    return out


def main():
    job = json.loads(sys.stdin.read())
    result = {}
    for path in job["models"]:
        d = metadata.MetadataDisplayer.with_model_file(path)
        result[path] = {"metadata": json.loads(d.get_metadata_json()),
                        "custom": custom_metadata(d.get_metadata_buffer()),
                        "associated_files": d.get_packed_associated_file_list()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
