"""Generic inputs: NIfTI folders (nnU-Net `imagesTr`/`labelsTr`, `images`/`labels` siblings, or flat folders with
`X_seg`/`X_mask`/`X_label` beside `X`), single NIfTI files, and DICOM series folders."""

from __future__ import annotations

import re
from pathlib import Path

from vertseg.data.readers.files import is_dicom, is_nifti, nifti_stem, walk_files
from vertseg.data.readers.splits import split_from_path
from vertseg.data.types import CaseSource

_IMAGE_DIRS = {"images", "image", "imgs", "img", "ct", "cts", "volumes", "volume", "imagestr", "imagests", "imagesva"}
_LABEL_DIRS = {
    "labels", "label", "masks", "mask", "segs", "seg", "segmentations", "gt", "labelstr", "labelsts", "labelsva",
}
_LABEL_SUFFIX = re.compile(r"(?P<stem>.+?)[_-](seg|segmentation|mask|msk|label|labels|gt)$", re.IGNORECASE)
_NNUNET_CHANNEL = re.compile(r"(?P<stem>.+)_0000$")


def _extra_channel(path: Path) -> bool:
    """nnU-Net's second and later input channels (`X_0001` beside `X_0000`): not separate cases."""
    match = re.match(r"(?P<stem>.+)_(?P<channel>\d{4})$", nifti_stem(path))
    if match is None or match["channel"] == "0000":
        return False
    return any((path.parent / f"{match['stem']}_0000{ext}").exists() for ext in (".nii.gz", ".nii"))


def _image_key(path: Path) -> str:
    stem = nifti_stem(path)
    match = _NNUNET_CHANNEL.match(stem)
    return match["stem"] if match else stem


def discover_nifti_folder(root: Path, dataset: str | None = None, label_format: str = "verse") -> list[CaseSource]:
    """Pair images and labels by name; an image without a label is an unlabeled case."""
    files = walk_files(root)
    images: dict[tuple[Path, str], Path] = {}
    labels: dict[tuple[Path, str], Path] = {}
    centroids: dict[tuple[Path, str], Path] = {}
    for path in files:
        parent = path.parent
        # images/ and labels/ below the root pair up in their parent; the root's own name means nothing (`-i
        # imagesTs`, or a folder called gt/ holding scans and masks side by side)
        folder = parent.name.lower() if parent != root else ""
        group = parent.parent if folder in _IMAGE_DIRS | _LABEL_DIRS else parent
        if path.name.endswith("_ctd.json"):
            centroids[(group, path.name[: -len("_ctd.json")])] = path
            continue
        if not is_nifti(path) or _extra_channel(path):
            continue
        stem = nifti_stem(path)
        suffixed = _LABEL_SUFFIX.match(stem)
        if folder in _LABEL_DIRS:
            key = (group, suffixed["stem"] if suffixed else stem)
            labels[key] = path
        elif suffixed and folder not in _IMAGE_DIRS:
            labels[(group, suffixed["stem"])] = path
        else:
            images[(group, _image_key(path))] = path
    orphans = sorted(set(labels) - set(images))
    if orphans:
        group, name = orphans[0]
        raise ValueError(f"{labels[orphans[0]]}: label without a matching image {name!r} in {group}")
    sources = []
    for (group, name), image in sorted(images.items()):
        case_id = name if group == root else f"{group.relative_to(root).as_posix().replace('/', '_')}_{name}"
        sources.append(
            CaseSource(
                case_id=case_id,
                patient_id=name,
                dataset=dataset or root.name,
                split=split_from_path(image, root),
                image=image,
                mask=labels.get((group, name)),
                centroids=centroids.get((group, name)),
                label_format=label_format,
            )
        )
    return sources


def discover_single_nifti(path: Path, dataset: str | None = None) -> list[CaseSource]:
    stem = nifti_stem(path)
    return [CaseSource(case_id=stem, patient_id=stem, dataset=dataset or "nifti", split="", image=path)]


def dicom_folders(root: Path) -> list[Path]:
    """Folders below (and including) root that hold at least one DICOM file."""
    if root.is_file():
        return [root.parent] if is_dicom(root) else []
    folders = {p.parent for p in walk_files(root) if is_dicom(p)}
    return sorted(folders)


def discover_dicom(root: Path, dataset: str | None = None) -> list[CaseSource]:
    """One unlabeled case per DICOM series; the patient is the PatientID tag (folder name when anonymised)."""
    import SimpleITK as sitk

    base = root if root.is_dir() else root.parent
    sources = []
    for folder in dicom_folders(root):
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
        for uid in series:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            reader.ReadImageInformation()
            patient = reader.GetMetaData("0010|0020").strip() if reader.HasMetaDataKey("0010|0020") else ""
            rel = folder.relative_to(base).as_posix().replace("/", "_") if folder != base else folder.name
            case_id = rel if len(series) == 1 else f"{rel}_{uid[-12:]}"
            sources.append(
                CaseSource(
                    case_id=case_id,
                    patient_id=patient or case_id,
                    dataset=dataset or "dicom",
                    split=split_from_path(Path(files[0]), base),
                    image=folder,
                    series_uid=uid,
                )
            )
    return sources
