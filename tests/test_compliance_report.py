"""The compliance report a board reads: page 1 says why in words and shows the evidence; every check's status
comes from its rules; data counts add up; independence of the sets; intended use and limitations from the
policy; patients' images blurred or withheld when the policy says so. Read back from the PDF itself."""

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader
from typer.testing import CliRunner

from conftest import CHEAP_MEMORIZATION, write_policy
from gate.cli import app
from gate.evidence import findings, independence, subject_ids
from gate.imageset import ImageSet, ManifestEntry
from gate.render.redact import redact
from gate.report import CheckResult, RuleOutcome
from gate.validators import Figure

runner = CliRunner()


def gate(*args):
    return runner.invoke(app, list(map(str, args)))


def _rule(passed: bool, severity: str = "block", value: float | None = 0.5) -> RuleOutcome:
    return RuleOutcome(check_id="c", metric="m", bounds={"lte": 0.05}, condition="<= 0.05", severity=severity,
                       value=value, passed=passed)


def test_a_check_whose_block_rule_failed_is_never_ok():
    assert CheckResult(id="c", validator="v", status="ok", rules=[_rule(False)]).outcome == "fail"
    assert CheckResult(id="c", validator="v", status="ok", rules=[_rule(False, "warn")]).outcome == "warn"
    assert CheckResult(id="c", validator="v", status="ok", rules=[_rule(True)]).outcome == "pass"
    assert CheckResult(id="c", validator="v", status="error", rules=[_rule(True)]).outcome == "error"
    # serialised with the report, so report.json and every rendering read the same status
    assert json.loads(CheckResult(id="c", validator="v", status="ok", rules=[_rule(False)])
                      .model_dump_json())["outcome"] == "fail"


def test_findings_say_what_a_failed_rule_means_and_what_to_do():
    check = CheckResult(id="memorization", validator="memorization", status="ok",
                        rules=[_rule(False, value=0.25), _rule(True), _rule(False, "warn")],
                        metric_descriptions={"m": "share of samples flagged as copies"})
    [f] = findings([check], {"memorization": {"*": "Retrain."}})
    assert f.rule == "memorization.m" and f.value == 0.25 and f.condition == "<= 0.05"
    assert f.meaning.startswith("share of samples flagged as copies: the candidate scores 0.25")
    assert "0.2 beyond the bound" in f.meaning and f.action == "Retrain."
    broken = CheckResult(id="seg", validator="segmentation", status="error", error="boom\nFORGED LINE")
    [g] = findings([broken])
    assert "did not finish" in g.meaning and "\n" not in g.meaning and "never counts as passed" in g.action


def test_independence_finds_shared_files_images_and_subjects():
    rng = np.random.default_rng(0)
    a, b, c = (rng.random((16, 16), dtype=np.float32) for _ in range(3))
    blank = np.zeros((16, 16), np.float32)

    def files(*names):
        return tuple(ManifestEntry(f"/data/{n}", f"{hash(n.split('/')[-1]):064x}"[-64:]) for n in names)

    train = ImageSet("train", ("1", "2", "3"), np.stack([a, b, blank]),
                     files("images/sub-01_a.png", "images/sub-02_b.png", "labels/sub-01_a.png"))
    holdout = ImageSet("holdout", ("1", "2"), np.stack([c, blank]),
                       files("images/subject_1_x.png", "labels/sub-01_a.png"))
    candidate = ImageSet("candidate", ("s0", "s1"), np.stack([a * 1.0, c + 0.5]))  # drawn: no files
    ind = independence([train, holdout, candidate])
    pairs = {o.sets: o for o in ind.pairs}
    th = pairs[("train", "holdout")]
    # same subject (sub-01 and subject_1), no same image (blank slices do not count), no same file (the
    # shared label map does not count: two empty label maps are not a leak)
    assert (th.shared_subjects, th.shared_images, th.shared_files) == (1, 0, 0)
    assert pairs[("train", "candidate")].shared_images == 1  # an exact copy of a train image
    assert pairs[("holdout", "candidate")].shared_images == 0
    assert ind.subjects == {"train": 2, "holdout": 1, "candidate": 0}
    assert subject_ids(["sub-007_T1w.nii.gz", "patient-7.dcm", "x/sub-ab1_c.png", "sub-sampled.png"]) == {"7", "ab1"}


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((image * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_patient_images_are_blurred_or_withheld_and_nothing_else(mri):
    scan = mri["train_images"][40] / mri["train_images"][40].max()
    real = Figure("pairs", _png(scan), "caption", shows_real_images=True)
    plot = Figure("histogram", _png(scan), "caption")
    blurred = redact({"c": [real, plot]}, "blur")["c"]
    withheld = redact({"c": [real, plot]}, "withhold")["c"]
    assert redact({"c": [real]}, "show")["c"][0].png == real.png
    assert blurred[1].png == plot.png and withheld[1].png == plot.png  # figures without patients are untouched

    def pixels(fig):
        return np.asarray(Image.open(io.BytesIO(fig.png)).convert("L"), np.float32) / 255

    def detail(im):  # the fine structure (folds, ventricles' edges) that makes a scan recognisable
        from scipy.ndimage import gaussian_filter

        return float(np.std(im - gaussian_filter(im, 2)))

    assert detail(pixels(blurred[0])) < 0.1 * detail(scan) and "blurred by policy" in blurred[0].caption
    assert np.corrcoef(pixels(withheld[0]).ravel(), scan.ravel())[0, 1] < 0.1
    assert "withheld by policy" in withheld[0].caption


@pytest.fixture(scope="module")
def refused(tmp_path_factory, mri):
    """A copying candidate refused under a policy with intended use, limitations, retention and
    patient_images: withhold; one holdout file also sits in train (a leak the report must show)."""
    root = tmp_path_factory.mktemp("refused")
    train = root / "train"
    shutil.copytree(mri["train"], train)
    leaked = sorted(mri["holdout"].glob("*.npy"))[5]
    shutil.copy(leaked, train / leaked.name)
    policy = write_policy(root / "policy.yaml", train, mri["holdout"], params=CHEAP_MEMORIZATION)
    text = policy.read_text().replace("  owner: tests\n", """  owner: tests
  intended_use: Synthetic T1w axial brain slices of adults for training tissue segmenters; research use only.
  limitations: [Not validated on paediatric scans, Not for diagnosis]
  retention: Kept ten years in the institute's registry.
""").replace("spec:\n", "spec:\n  report: {patient_images: withhold}\n")
    policy.write_text(text)
    out = root / "out"
    res = gate("validate", "--policy", policy, "--samples", mri["copies"], "--out", out, "--quiet")
    assert res.exit_code == 1, res.output
    return out


def test_page_one_of_a_refused_candidate_says_why_and_shows_the_evidence(refused):
    pages = PdfReader(refused / "report.pdf").pages
    first = " ".join(pages[0].extract_text().split())
    assert "REFUSED: this version must not be promoted" in first
    assert "memorization.fraction_flagged = 1, needs <= 0.05: FAILED" in first
    assert "What this means: share of samples flagged as copies" in first and "What to do: The generator" in first
    assert "samples folder" in first and "policy test-policy, sha256" in first and "signature not signed" in first
    # the evidence figure: the flagged pairs are withheld by the policy, so page 1 shows the check's figure
    # without patients (MI and ONI against the null) rather than a grey box; section 2 says what was withheld
    [image] = pages[0].images
    assert "MI and ONI against the null" in first and image.image.size[0] > 300
    rest = " ".join(" ".join(p.extract_text() for p in pages[1:]).split())
    assert "Patients' images withheld by policy" in rest


def test_every_section_a_board_reads_is_in_the_pdf_and_report_json(refused):
    report = json.loads((refused / "report.json").read_text())
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(refused / "report.pdf").pages).split())
    assert [c["outcome"] for c in report["checks"]] == ["fail"]
    assert "check memorization (memorization): FAIL" in text
    # data: counts that add up (the copies folder holds files, no labels; train holds one file more)
    data = {d["name"]: d for d in report["provenance"]["data"]}
    assert data["train"]["n_image_files"] == data["train"]["n_images"] == 97 and data["train"]["n_label_files"] == 0
    assert data["candidate"]["origin"] == "files" and "97 image + 0 label = 97" in text
    # independence: the holdout file put in train is found as a shared file and a shared image
    th = next(p for p in report["independence"]["pairs"] if p["sets"] == ["train", "holdout"])
    assert th["shared_files"] == 1 and th["shared_images"] == 1
    assert th["examples"] == []  # file names carry subject ids: not in a report whose patients are withheld
    assert "Data warning: train and holdout share 1 files, 1 images" in text
    tc = next(p for p in report["independence"]["pairs"] if p["sets"] == ["train", "candidate"])
    assert tc["shared_files"] == 0  # the copies are noised: not the same files
    assert "3. Data and independence" in text
    statement = report["statement"]
    assert statement["intended_use"].startswith("Synthetic T1w") and len(statement["limitations"]) == 2
    assert "Not validated on paediatric scans" in text and "Kept ten years" in text
    assert "memorization cannot see: Copies of images that are not in the train set" in text
    assert "5. Change against the current champion" in text and "Appendix A. Policy" in text
    html = (refused / "report.html").read_text()
    assert "What this means" in html and "Independence" in html and "Synthetic T1w" in html
    # the figure files on disk carry the same redaction as the PDF and the HTML
    index = json.loads((refused / "figures" / "index.json").read_text())
    real = [i for i in index if i["shows_real_images"]]
    assert real and all("withheld by policy" in i["caption"] for i in real)


def test_a_hostile_report_folder_is_rendered_again_without_crash_or_unredacted_patients(refused, tmp_path, mri):
    """gate report on a folder whose files were swapped: a truncated PNG, a scan put in place of a withheld
    figure with its flag removed from the index, an attestation naming the report but not in gate's
    format. The report renders (exit 0), says what it could not draw, and redacts by the report's policy."""
    import base64
    import hashlib

    folder = tmp_path / "folder"
    shutil.copytree(refused, folder)
    index = json.loads((folder / "figures" / "index.json").read_text())
    real = next(i for i in index if i["shows_real_images"])
    other = next(i for i in index if not i["shows_real_images"])
    scan = mri["train_images"][40] / mri["train_images"][40].max()
    (folder / "figures" / real["file"]).write_bytes(_png(scan))
    del real["shows_real_images"]  # as an older gate's index, or an edited one
    (folder / "figures" / "index.json").write_text(json.dumps(index))
    (folder / "figures" / other["file"]).write_bytes((folder / "figures" / other["file"]).read_bytes()[:80])
    digest = hashlib.sha256((folder / "report.json").read_bytes()).hexdigest()
    payload = base64.b64encode(json.dumps({"predicate": {"report_sha256": digest}}).encode()).decode()
    (folder / "attestation.dsse.json").write_text(json.dumps({"payload": payload}))
    res = gate("report", folder)
    assert res.exit_code == 0, res.output
    pages = PdfReader(folder / "report.pdf").pages
    text = " ".join(" ".join(p.extract_text() for p in pages).split())
    assert "could not be drawn" in text and "not in gate's format" in text
    for page in pages:
        for image in page.images:
            shown = np.asarray(Image.open(io.BytesIO(image.data)).convert("L").resize((128, 128)), np.float32)
            assert not shown.std() or np.corrcoef(shown.ravel(), scan.ravel())[0, 1] < 0.5
    assert base64.b64encode(_png(scan)).decode() not in (folder / "report.html").read_text()
