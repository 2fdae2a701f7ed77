"""Pure functions on arrays and NIfTI images for the prepare stage (and the atlases of the group level).

Modules: ``gradients`` (gradient tables, b-vector rotation), ``b0`` (b0 reference), ``mask`` (brain mask),
``templates`` (template grids and their loading), ``template_files`` (a template's files in the TemplateFlow
home, download), ``grid`` (grid equality, regridding, padding, resampling onto a grid), ``transforms``
(chains of ANTs transform files), ``registration`` (antspyx registrations), ``resample`` (composite
transforms, one-step resampling, back to native space), ``ants_runtime`` (threads and temporary files of
ANTs calls), ``nifti`` (checked loading, atomic saving), ``adc`` and ``tracts`` (atlases). Nothing here
knows of Nipype or torch.
"""
