"""Pure functions on arrays and NIfTI images for the prepare stage (and the atlases of the group level).

Modules: ``gradients`` (gradient tables, b-vector rotation), ``b0`` (b0 reference), ``mask`` (brain mask),
``templates`` (TemplateFlow templates and grids), ``registration`` (antspyx registrations and transform
chains), ``resample`` (composite transforms, one-step resampling, back to native space), ``ants_runtime``
(threads and temporary files of ANTs calls), ``nifti`` (checked loading, atomic saving), ``adc`` and
``tracts`` (atlases). Nothing here knows of Nipype or torch.
"""
