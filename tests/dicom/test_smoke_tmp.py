from integration.dicom.samples import bundled_sample_paths
from tests.peers import storescu_each_syntax


def test_smoke(listener):
    results = storescu_each_syntax(listener.port, bundled_sample_paths())
    for r in results:
        print(r.args[8], r.returncode, r.stderr[-300:])
    print(listener.log())
    assert all(r.returncode == 0 for r in results)
    assert len(listener.stored_files()) == len(bundled_sample_paths())
