"""The Hounsfield values of one synthetic CT, drawn per case (domain randomisation within real-CT ranges).

A network trained on one fixed intensity per tissue learns the intensities; drawing every tissue from the range it
takes across scanners, contrast phases, ages and doses makes shape and context the only stable cues, which is what
transfers to real CT (SynthSeg's lesson, kept inside CT's physical scale). Ranges are typical adult values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTRAST_PHASES = ("none", "arterial", "venous")


@dataclass(frozen=True)
class Tissues:
    phase: str  # contrast phase: none | arterial | venous
    air: float
    lung: float
    fat: float
    visceral_fat: float
    muscle: float
    liver: float
    spleen: float
    kidney_cortex: float
    kidney_medulla: float
    artery: float  # aorta, iliac arteries, left heart chambers
    vein: float  # vena cava, right heart chambers
    myocardium: float
    bowel: float
    oral_contrast: float  # NaN: no oral contrast in this scan
    bladder: float
    csf: float
    disc: float
    cartilage: float
    cortical: float  # vertebral cortex (thin: reads lower than compact bone of long bones)
    cancellous: float  # vertebral body interior
    rib_marrow: float  # ribs, sternum, pelvis interior
    long_bone_marrow: float  # humerus / femur shaft: fatty marrow
    compact: float  # long-bone cortex, skull
    calcification: float
    table: float
    metal: float
    texture_hu: float  # std of the trabecular texture added to cancellous bone
    cortex_mm: float  # vertebral cortex thickness (thin in the thoracic and osteoporotic spine: a faint rim at 3 mm)
    skin: float

    def __getitem__(self, name: str) -> float:
        return float(getattr(self, name))


def sample_tissues(rng: np.random.Generator) -> Tissues:
    """One case's tissue table; contrast phase, bone density and fat content vary together as they do in patients."""
    phase = CONTRAST_PHASES[int(rng.choice(3, p=[0.35, 0.3, 0.35]))]
    u = rng.uniform
    liver = u(45, 70) + (u(5, 25) if phase == "arterial" else u(35, 70) if phase == "venous" else 0.0)
    artery = {"none": u(30, 55), "arterial": u(220, 520), "venous": u(130, 220)}[phase]
    vein = {"none": u(30, 55), "arterial": u(40, 160), "venous": u(120, 200)}[phase]
    cortex = {"none": u(25, 40), "arterial": u(140, 260), "venous": u(130, 200)}[phase]
    osteoporotic = rng.random() < 0.3  # older patients: low trabecular density, thinner cortex
    cancellous = u(50, 140) if osteoporotic else u(130, 300)
    return Tissues(
        phase=phase,
        air=u(-1024, -990),
        lung=u(-900, -780),
        fat=u(-125, -80),
        visceral_fat=u(-110, -60),
        muscle=u(35, 65),
        liver=liver,
        spleen=liver + u(-10, 15),
        kidney_cortex=cortex,
        kidney_medulla=cortex * u(0.4, 0.8) if phase != "none" else cortex,
        artery=artery,
        vein=vein,
        myocardium=u(35, 55) if phase == "none" else u(80, 150),
        bowel=u(0, 45),
        oral_contrast=u(180, 700) if rng.random() < 0.3 else float("nan"),
        bladder=u(0, 20) if rng.random() < 0.9 else u(200, 900),
        csf=u(0, 20),
        disc=u(55, 110),
        cartilage=u(60, 200),
        cortical=u(350, 750) if osteoporotic else u(500, 1100),
        cancellous=cancellous,
        rib_marrow=u(120, 320),
        long_bone_marrow=u(-80, 60),
        compact=u(900, 1700),
        calcification=u(300, 1200),
        table=u(-200, 500),
        metal=u(2500, 3071),
        texture_hu=u(15, 60),
        cortex_mm=u(0.5, 1.4),
        skin=u(20, 70),
    )
